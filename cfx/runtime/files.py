"""File permissions of cfx's atomic writers.

``tempfile.mkstemp`` creates its file owner-only (``-rw-------``) whatever the umask, and an atomic writer that
moves that file into place keeps the mode: a checkpoint downloaded or trained into a shared group folder would be
unreadable for the group. :func:`chmod_like_new_file` gives such a file the mode ``open()`` gives every other file cfx
writes: ``0o666`` less the process umask.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

DEFAULT_FILE_MODE = 0o666  # what open() asks for; the kernel takes the umask off
_UMASK_LINE = re.compile(r"^Umask:\s*([0-7]+)\s*$", re.MULTILINE)
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (``/proc/self/status``, Linux ≥ 4.7);
    elsewhere set and restored at once (``os.umask`` has no read-only form) under a lock."""
    try:
        match = _UMASK_LINE.search(Path("/proc/self/status").read_text())
    except OSError:
        match = None
    if match:
        return int(match.group(1), 8)
    with _UMASK_LOCK:
        umask = os.umask(0o077)
        os.umask(umask)
    return umask


def chmod_like_new_file(path: str | Path) -> None:
    """Set the mode of ``path`` (a file made by ``tempfile.mkstemp``, 0o600) to what ``open()`` would have created:
    ``0o666 & ~umask``, e.g. 0o644 under umask 022, 0o664 under 002 (group-shared folders)."""
    os.chmod(path, DEFAULT_FILE_MODE & ~current_umask())

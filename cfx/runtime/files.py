"""Atomic writes, the one way cfx writes a file a reader or a rerun may see, and their permissions.

:func:`atomic_path` yields a temporary path next to the destination (``.<name>.tmp<pid>-<n><suffix>``, in the same
folder so that the final ``os.replace`` is atomic); the body writes it with any library (PIL, torch, pandas,
matplotlib), and on success it replaces the destination, on any failure it is removed: a killed job never leaves
half a file under the real name. :func:`write_text_atomic` and :func:`write_json_atomic` cover the common cases.

``tempfile.mkstemp`` creates its file owner-only (``-rw-------``) whatever the umask, and an atomic writer that
moves that file into place keeps the mode: a checkpoint downloaded or trained into a shared group folder would be
unreadable for the group. :func:`chmod_like_new_file` gives such a file the mode ``open()`` gives every other file cfx
writes: ``0o666`` less the process umask (the temporary files of :func:`atomic_path` are created by ``open()``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


_COUNTER = itertools.count()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder (created if missing) that replaces ``path`` when the block ends without
    an error and is removed when it raises. The temporary name keeps ``path``'s suffix, so writers that choose the
    format from it (PIL, matplotlib) write the right one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}-{next(_COUNTER)}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_csv_atomic(path: str | Path, frame: Any, **to_csv: Any) -> Path:
    """Write a pandas DataFrame as CSV to ``path`` atomically (``to_csv`` options, default ``index=False``)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **{"index": False, **to_csv})
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any, **dumps: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (``dumps``: json.dumps options, default ``indent=1``)."""
    return write_text_atomic(path, json.dumps(obj, **{"indent": 1, **dumps}))

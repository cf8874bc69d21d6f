"""Logs of workflow jobs: line-oriented log files, cfx's log lines in them, coarse progress on the terminal.

A rule script calls :func:`log_to_rule_log` first. From then on

* ``sys.stderr`` and ``sys.stdout`` write to the rule's log file through a :class:`LineStream`: ordinary lines go
  through as they are; progress bars, which tqdm redraws in place with carriage returns, become one plain line at
  most every ``interval`` seconds (and their last state), so a log file never holds a carriage return and a
  training log is not one 30 KB line;
* cfx's ``logging`` records (INFO and up: "N already done", "settings changed, regenerated", the merge's flip
  rate, trust-on-first-use digests) go to the log file with a time stamp;
* the same throttled progress lines, and cfx's warnings, also go to the terminal that runs ``snakemake`` (the
  process's original stderr; under Slurm, the job's Slurm log), prefixed with the job's rule and wildcards, so a
  ten-minute training job shows how far it is instead of nothing.

Torch-free: the scripts call it before they import torch.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import sys
import time
from typing import Any, TextIO

PROGRESS_INTERVAL = 30.0  # seconds between two progress lines of one bar, in the log and on the terminal
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LineStream(io.TextIOBase):
    """A text stream that writes whole lines to ``target`` and turns carriage-return redraws (progress bars) into
    a plain line at most every ``interval`` seconds, copied to ``terminal`` with ``prefix`` when one is given."""

    def __init__(self, target: TextIO, terminal: TextIO | None = None, prefix: str = "",
                 interval: float = PROGRESS_INTERVAL, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.target = target
        self.terminal = terminal
        self.prefix = prefix
        self.interval = interval
        self.clock = clock
        self._partial = ""  # text after the last line end
        self._progress = ""  # the latest redrawn state not yet written
        self._last_progress = float("-inf")
        self._after_redraw = False  # the text since the last line end follows a carriage return

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        while True:
            cut = min((i for i in (self._partial.find("\r"), self._partial.find("\n")) if i >= 0), default=-1)
            if cut < 0:
                break
            segment, end, self._partial = self._partial[:cut], self._partial[cut], self._partial[cut + 1:]
            redrawn, self._after_redraw = self._after_redraw, end == "\r"
            if end == "\r":
                if segment.strip():
                    self._progress = segment.strip()
                    self._emit_progress(force=False)
            elif redrawn and segment.strip():  # a bar's last state, ended by a newline: it replaces the pending one
                self._progress = segment.strip()
                self._flush_progress()
            elif segment.strip() or not self._progress:
                self._flush_progress()
                self.target.write(segment + "\n")
        return len(text)

    def _emit_progress(self, force: bool) -> None:
        now = self.clock()
        if self._progress and (force or now - self._last_progress >= self.interval):
            self.target.write(self._progress + "\n")
            if self.terminal is not None:
                self.terminal.write(f"{self.prefix}{self._progress}\n")
                self.terminal.flush()
            self._last_progress = now
            self._progress = ""

    def _flush_progress(self) -> None:
        """Write the latest redrawn state before an ordinary line (a bar's final state, e.g. 100 %)."""
        self._emit_progress(force=True)

    def flush(self) -> None:
        self.target.flush()

    def close(self) -> None:
        """Write what is left: the latest progress state and an unterminated last line."""
        if self.closed:
            return
        self._flush_progress()
        if self._partial.strip():
            self.target.write(self._partial + "\n")
            self._partial = ""
        self.target.flush()
        super().close()


class TerminalHandler(logging.StreamHandler):
    """cfx's warnings and errors on the terminal, prefixed with the job (``[generate celeba_smile/dime 0-of-2]``)."""

    def __init__(self, stream: TextIO, prefix: str) -> None:
        super().__init__(stream)
        self.setFormatter(logging.Formatter(f"{prefix}%(levelname)s %(message)s"))


def job_prefix(rule: str, wildcards: dict[str, Any]) -> str:
    """``[rule value/value/...] `` naming a job on the terminal."""
    values = "/".join(str(v) for v in wildcards.values())
    return f"[{rule}{' ' + values if values else ''}] "


def log_to_rule_log(snakemake: Any, interval: float = PROGRESS_INTERVAL) -> LineStream:
    """Send this rule job's stderr, stdout and cfx's log records to its log file (``snakemake.log[0]``) as described
    in the module docstring, with progress also on the terminal; returns the log stream."""
    terminal = sys.__stderr__
    handle = open(snakemake.log[0], "w", buffering=1)  # noqa: SIM115 - open for the life of the job
    wildcards = dict(snakemake.wildcards.items()) if hasattr(snakemake.wildcards, "items") else {}
    prefix = job_prefix(snakemake.rule, wildcards)
    stream = LineStream(handle, terminal, prefix, interval)
    sys.stderr = sys.stdout = stream
    atexit.register(stream.close)  # after a traceback too: Python prints it before the exit handlers run
    os.environ.setdefault("TQDM_MININTERVAL", str(min(interval, 5.0)))  # fewer redraws for the stream to drop
    logging.basicConfig(stream=stream, level=logging.INFO, format=LOG_FORMAT, force=True)
    if terminal is not None:
        handler = TerminalHandler(terminal, prefix)
        handler.setLevel(logging.WARNING)
        logging.getLogger("cfx").addHandler(handler)
    return stream

"""Retry only what a retry can fix: a job that ran out of memory (its retry runs with half the batch).

Snakemake retries every failed job (a rule's ``retries``) and cannot tell why it failed. A job wrapped in
:func:`retry_only_out_of_memory` records any other error in a marker file next to its output; its retries find the
marker and stop at once with that error, instead of repeating minutes of work that fail the same way. A job killed
by a signal (a time limit, a lost node) leaves no marker and is retried as before. Torch-free: a rule script checks
the marker before it imports torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

# how PyTorch's allocators word a failed allocation (torch.cuda.OutOfMemoryError's text, the CPU allocator's)
OUT_OF_MEMORY_TEXTS = ("out of memory", "can't allocate memory")


class NotRetried(RuntimeError):
    """A retry of a job whose previous attempt failed with an error a smaller batch cannot fix."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a failed allocation (CUDA or host memory), the one failure a smaller batch may fix."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError
        return True
    return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in OUT_OF_MEMORY_TEXTS)


def failure_marker(output: str | Path) -> Path:
    """The marker file of a job whose output is ``output``: ``.<name>.failed`` beside it."""
    output = Path(output)
    return output.with_name(f".{output.name}.failed")


@contextlib.contextmanager
def retry_only_out_of_memory(output: str | Path, attempt: int) -> Iterator[None]:
    """Run the body of attempt ``attempt`` (1 = first) of the job writing ``output``; see the module docstring.

    The first attempt clears a marker left by an earlier run; a later attempt with a marker raises
    :class:`NotRetried` naming the first error."""
    marker = failure_marker(output)
    if attempt > 1 and marker.is_file():
        raise NotRetried(f"attempt {attempt} not run: an earlier attempt failed with an error that a retry with a "
                         f"smaller batch cannot fix: {marker.read_text().strip()} (fix it, then rerun snakemake)")
    marker.unlink(missing_ok=True)
    try:
        yield
    except Exception as error:
        if not is_out_of_memory(error):
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{type(error).__name__}: {error}"[:4000] + "\n")
        raise

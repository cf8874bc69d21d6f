"""cfx.runtime.logs: rule logs are line-oriented, progress bars become throttled lines, cfx's records reach the log
and progress reaches the terminal."""

import io
import logging
import subprocess
import sys

from tqdm import tqdm

from cfx.runtime.logs import LineStream, job_prefix


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_carriage_return_redraws_become_throttled_lines():
    log, terminal, clock = io.StringIO(), io.StringIO(), Clock()
    stream = LineStream(log, terminal, "[train_model mini_ddpm] ", interval=30, clock=clock)
    stream.write("loading\n")
    for step in range(1, 101):
        clock.now = step  # one redraw per second
        stream.write(f"\rtrain: {step}/100")
    stream.write("\n")
    stream.write("done\n")
    stream.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0] == "loading" and lines[-1] == "done"
    progress = [line for line in lines if line.startswith("train:")]
    assert progress[0] == "train: 1/100" and progress[-1] == "train: 100/100"  # first and final state
    assert len(progress) == 1 + 100 // 30 + 1  # one line every 30 s in between
    assert terminal.getvalue().splitlines() == ["[train_model mini_ddpm] " + line for line in progress]


def test_tqdm_output_in_a_rule_log_has_no_carriage_return():
    log = io.StringIO()
    stream = LineStream(log, None, interval=0)
    for _ in tqdm(range(5), file=stream, desc="dime chunk 0/2", mininterval=0):
        pass
    stream.close()
    assert "\r" not in log.getvalue() and "dime chunk 0/2: 100%" in log.getvalue()


def test_a_rule_script_sends_cfx_records_to_the_log_and_progress_to_the_terminal(tmp_path):
    """The set-up a rule script runs (log_to_rule_log) in a fresh interpreter, as Snakemake starts one."""
    log = tmp_path / "job.log"
    script = f"""
import logging
from types import SimpleNamespace
from tqdm import tqdm
from cfx.runtime.logs import log_to_rule_log
wildcards = {{"experiment": "celeba_smile", "method": "dime"}}
job = SimpleNamespace(log=[{str(log)!r}], rule="generate", wildcards=SimpleNamespace(items=wildcards.items))
log_to_rule_log(job, interval=0)
logging.getLogger("cfx.generate").info("chunk 0/2: 6 images, 2 already done")
logging.getLogger("cfx.merge").warning("flip rate below the bar")
for _ in tqdm(range(3), desc="dime chunk 0/2", mininterval=0):
    pass
print("a print")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = log.read_text()
    assert "\r" not in text
    assert "INFO cfx.generate: chunk 0/2: 6 images, 2 already done" in text and "a print" in text
    assert "[generate celeba_smile/dime] dime chunk 0/2: 100%" in result.stderr
    assert "[generate celeba_smile/dime] WARNING flip rate below the bar" in result.stderr


def test_job_prefix():
    assert job_prefix("table", {"table": "table1"}) == "[table table1] "
    assert job_prefix("all_checkpoints", {}) == "[all_checkpoints] "
    assert logging.getLogger("cfx").level == logging.NOTSET  # importing the module configures nothing

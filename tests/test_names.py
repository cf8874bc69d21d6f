"""No name from a suite or config file can make a path outside the project: checked when a suite is loaded (the
workflow and every cfx command), in the schemas, and by a dry run of the workflow."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cfx.cli import main
from cfx.suite import SuiteError, load_suite

ROOT = Path(__file__).resolve().parent.parent
MINI = yaml.safe_load((ROOT / "workflow" / "suites" / "mini.yaml").read_text())


def _write(tmp_path: Path, suite: dict) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def _renamed(section: str, old: str, new: str) -> dict:
    suite = yaml.safe_load(yaml.safe_dump(MINI, sort_keys=False))
    suite[section] = {(new if k == old else k): v for k, v in suite[section].items()}
    return suite


@pytest.mark.parametrize(("section", "old", "new"), [
    ("experiments", "celeba_young", "../../../outside"),
    ("methods", "svce", "/tmp/x"),
    ("models", "mini_oracle", "a/b"),
    ("tables", "table_extra", ".hidden"),
    ("datasets", "synth_celeba", "..")])
def test_unsafe_names_are_refused_when_a_suite_is_loaded(tmp_path, section, old, new):
    with pytest.raises(SuiteError, match=rf"{section}: name '{new}' is not allowed.*letters, digits"):
        load_suite(_write(tmp_path, _renamed(section, old, new)))


def test_unsafe_references_and_checkpoint_extensions_are_refused(tmp_path):
    suite = yaml.safe_load(yaml.safe_dump(MINI, sort_keys=False))
    suite["tables"]["table1"]["tasks"]["age"] = "../x"
    with pytest.raises(SuiteError, match=r"tables: table1: tasks: name '../x'"):
        load_suite(_write(tmp_path, suite))
    suite = yaml.safe_load(yaml.safe_dump(MINI, sort_keys=False))
    suite["checkpoints"] = {"ok": {"url": "https://example.org/x.pt", "ext": "pt/../../../x"}}
    with pytest.raises(SuiteError, match=r"checkpoints: ok: ext"):
        load_suite(_write(tmp_path, suite))


def test_cfx_download_refuses_a_registry_name_that_leaves_the_checkpoint_folder(tmp_path):
    """cfx download --suite FILE does not run the schema: the name check of load_suite stops it before any write."""
    target = tmp_path / "payload.bin"
    target.write_bytes(b"not a checkpoint")
    suite = {"name": "evil", "checkpoints": {"../../x": {"url": target.as_uri(), "ext": "pt"}}}
    out = tmp_path / "work" / "resources" / "checkpoints"
    result = CliRunner().invoke(main, ["download", "--all", "--suite", str(_write(tmp_path, suite)), "--dir", str(out),
                                       "--retries", "0"])
    assert result.exit_code != 0
    assert "name '../../x' is not allowed" in result.output
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "work" / "x.pt").exists() and not out.exists()


def test_the_workflow_refuses_an_experiment_named_outside(tmp_path):
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("workflow", "envs", "profiles"):
        shutil.copytree(ROOT / name, tmp_path / name)
    suite = _renamed("experiments", "celeba_young", "../../../outside")
    suite["tables"]["table1"]["tasks"]["age"] = "../../../outside"
    (tmp_path / "workflow" / "suites" / "mini.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "experiments: name '../../../outside' is not allowed" in output
    assert "results/cf/../" not in output
    bad_root = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--config", "tables=[../t]"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
    assert bad_root.returncode != 0 and "../t" in bad_root.stdout + bad_root.stderr

"""Paper-suite dataset preparation through Snakemake: with a fake data root in the upstream layout the index is
planned and written; without data_roots the run stops saying what to download, from where, and which key to set."""

import pandas as pd

from tests.factories.datasets import fake_celebahq, fake_imagenet_val
from tests.factories.workflow import copy_workflow, run_snakemake


def _copy_workflow(dest):
    dest.mkdir()
    return copy_workflow(dest)


def test_paper_index_planned_with_data_root(tmp_path):
    wf = _copy_workflow(tmp_path / "wf")
    fake_celebahq(tmp_path / "hq")
    result = run_snakemake(["-n", "--quiet", "rules", "--config", "suite=paper",
                            f"data_roots={{celebahq: {tmp_path / 'hq'}}}", "--",
                            "results/data/celebahq/index.csv"], wf)
    assert result.returncode == 0, result.stderr
    assert any(line.split()[:2] == ["index_dataset", "1"] for line in (result.stdout + result.stderr).splitlines())


def test_paper_index_without_data_root_says_what_to_download(tmp_path):
    wf = _copy_workflow(tmp_path / "wf")
    result = run_snakemake(["-n", "--config", "suite=paper", "--", "results/data/celebahq/index.csv"], wf)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    for needed in ("CelebAMask-HQ-attribute-anno.txt", "https://github.com/switchablenorms/CelebAMask-HQ",
                   "data_roots: {celebahq:"):
        assert needed in message, message


def test_paper_imagenet_index_written(tmp_path):
    wf = _copy_workflow(tmp_path / "wf")
    fake_imagenet_val(tmp_path / "val")
    result = run_snakemake(["--cores", "1", "--config", "suite=paper", f"data_roots={{imagenet: {tmp_path / 'val'}}}",
                            "--", "results/data/imagenet/index.csv"], wf)
    assert result.returncode == 0, result.stderr
    index = pd.read_csv(wf / "results/data/imagenet/index.csv")
    assert list(index["image_id"]) == [f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 6)]

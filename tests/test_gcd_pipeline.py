"""GCD through the common machinery: direction search step, transfer as chunk generation into the upstream tree
(so the shared metrics read it), BB-LIG maps written as arrays and figures."""

import json

import numpy as np
import pytest
import torch

from cfx.data.celeba import build_index
from cfx.data.synthetic import write_synthetic_celeba
from cfx.generate import generate_chunk
from cfx.io.tree import OutputTree, read_info
from cfx.methods.gcd import load_direction
from cfx.steps import gcd_bblig, gcd_direction
from tests.factories.networks import GCD, MODELS, save_tiny_gcd_models

EXPERIMENT = {"dataset": "d", "split": "val", "image_size": 32, "query_label": 31, "classifier": "plain",
              "max_images": 3}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gcd")
    data = write_synthetic_celeba(root / "data", n_identities=30, images_per_identity=3, image_size=32, seed=0,
                                  progress=False)
    build_index(data, root / "index.csv")
    save_tiny_gcd_models(root)
    return root


def test_direction_search_transfer_tree_and_bblig(setup):
    checkpoints = {"classifier": setup / "plain.pt", "diffae": setup / "tiny_dae.ckpt"}
    record = gcd_direction(experiment=EXPERIMENT, method_spec=GCD, model_specs=MODELS, index_csv=setup / "index.csv",
                           checkpoints=checkpoints, out_path=setup / "gcd" / "direction.pt", seed=0, device="cpu",
                           threads=1)
    direction = load_direction(setup / "gcd" / "direction.pt")
    assert direction.query == 31 and direction.vector.shape == (32,)
    assert record["n_directions"] == 2 * 3 and len(torch.load(setup / "gcd" / "directions.pt")) == 6
    saved = json.loads((setup / "gcd" / "search.json").read_text())
    assert saved["source_position"] == 0 and saved["chosen"]["kind"] in ("g", "h")
    # the proxy was trained on all 40 logits + LPIPS, on data accumulated over both iterations
    assert [r["proxy_train_size"] for r in saved["iterations"]] == [16, 32]

    checkpoints["direction"] = setup / "gcd" / "direction.pt"
    tree = setup / "tree"
    manifest = generate_chunk(experiment=EXPERIMENT, method="gcd", method_spec=GCD, model_specs=MODELS,
                              index_csv=setup / "index.csv", checkpoints=checkpoints, chunk=0, chunks=1, seed=0,
                              tree_root=tree, manifest_path=tree / "chunks" / "gcd" / "0-of-1.json", device="cpu",
                              threads=1, progress=False)
    out = OutputTree(tree, "gcd", ext="png")
    assert manifest["n"] == 3 and out.completed_stems() == {"0000000", "0000001", "0000002"}
    for stem in sorted(out.completed_stems()):
        info = read_info(out.info_path(stem))
        assert info["target"] == 1 - info["pred"] and 0 <= info["bkl"] <= 1
        assert (info["cf_pred"] == info["target"]) == (info["bkl"] < 0.5)
    assert list(tree.glob("Results/gcd/*/*/CF/0000000.png")) and list(tree.glob("Original/*/0000000.png"))

    rows = gcd_bblig(experiment=EXPERIMENT, method_spec=GCD, model_specs=MODELS, index_csv=setup / "index.csv",
                     checkpoints=checkpoints, out_dir=setup / "bblig", n_images=2, device="cpu", threads=1)
    assert [r["stem"] for r in rows] == ["0000000", "0000001"]
    arrays = np.load(setup / "bblig" / "0000000.npz")
    assert arrays["map"].shape == (32, 32) and arrays["sig"].shape == (3, 32, 32)
    assert (setup / "bblig" / "0000001.png").stat().st_size > 1000


def test_cli_runs_the_three_gcd_steps(setup):
    import yaml
    from click.testing import CliRunner

    from cfx.cli import main

    suite = {"name": "t", "datasets": {"d": {"layout": "celeba"}}, "models": MODELS, "methods": {"gcd": GCD},
             "experiments": {"e": {**EXPERIMENT, "methods": ["gcd"]}}, "tables": {}}
    (setup / "suite.yaml").write_text(yaml.safe_dump(suite))
    common = ["--suite", str(setup / "suite.yaml"), "--experiment", "e", "--index", str(setup / "index.csv"),
              "--checkpoints", str(setup), "--diffae", str(setup / "tiny_dae.ckpt"), "--device", "cpu"]
    runner = CliRunner()
    out = runner.invoke(main, ["gcd", "direction", *common, "--out", str(setup / "cli" / "direction.pt")])
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["generate", *common, "--method", "gcd", "--tree", str(setup / "cli" / "tree"),
                               "--direction", str(setup / "cli" / "direction.pt")])
    assert out.exit_code == 0, out.output
    assert "3 images" in out.output
    out = runner.invoke(main, ["gcd", "bblig", *common, "--direction", str(setup / "cli" / "direction.pt"),
                               "--out", str(setup / "cli" / "bblig"), "--n-images", "1"])
    assert out.exit_code == 0, out.output
    assert (setup / "cli" / "bblig" / "0000000.png").exists()

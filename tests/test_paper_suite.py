"""The paper suite's table catalog as dry-runs: table1 (ACE/DiME Table 1, CelebA 128), table2 (ACE, BDD100k), table3
and table4 (ImageNet), table5 (ACE, BDD-OIA), table6 (LDCE Table 6, CelebA-HQ smile and age; DiME, ACE, LDCE,
GCD), table7 (GCD, CelebA 128), table8 (GCD, CheXpert 224), table9 (LDCE-txt, Oxford-IIIT Pets) and table10
(LDCE-txt, Flowers-102). With fake data roots in the upstream layouts the whole DAG of a table is planned from the
suite file (index, checkpoint downloads, one generation job per experiment, method and chunk, ACE's post-processing,
merges, metrics, the table) and no published network is trained (table10 trains LDCE's unpublished Flowers head);
without data_roots the run stops saying what to download."""

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cfx.data.synthetic import write_synthetic_celeba
from cfx.methods import own_model_key
from cfx.suite import load_suite, method_network, method_settings, metric_networks, network_checkpoint
from tests.factories.datasets import (
    fake_bdd_oia,
    fake_celebahq,
    fake_chexpert,
    fake_flowers,
    fake_imagenet_val,
    fake_pets,
)
from tests.factories.workflow import copy_workflow, parse_plan, snakemake

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "workflow" / "suites" / "paper.yaml"


def _table_needs(suite: dict, table: str, chunks: int) -> dict[str, object]:
    """What a table needs, derived from the suite file: (experiment, method) pairs, checkpoints, metric count."""
    spec = suite["tables"][table]
    experiments = list(spec["tasks"].values())
    pairs = [(e, m) for e in experiments for m in spec["methods"]]
    checkpoints = set()
    for experiment in experiments:
        exp = suite["experiments"][experiment]
        checkpoints.add(network_checkpoint(suite, exp["classifier"]))
        backbone = suite["models"][exp["classifier"]].get("backbone_weights")
        if backbone:  # a trained head's frozen backbone (LDCE's Flowers DINO), a registry download
            checkpoints.add(backbone)
        if {"dime", "ace"} & set(spec["methods"]):
            checkpoints.add(network_checkpoint(suite, exp["ddpm"]))
        for metric in spec["metrics"]:
            for network in metric_networks(suite, metric, experiment).values():
                if network["checkpoint"]:
                    checkpoints.add(network["checkpoint"])
    for method in spec["methods"]:  # GCD's DiffAE, LDCE's LDM per dataset and variant (miniSD or cin256-v2)
        key = own_model_key(method)
        for experiment in experiments if key else []:
            checkpoints.add(network_checkpoint(suite, method_settings(suite, method, experiment)[key]))
    for experiment in experiments:
        dime = method_settings(suite, "dime", experiment)
        if "dime" in spec["methods"] and dime["config"].get("l_perc", 0) > 0:
            checkpoints.add(dime["vgg19_weights"])
    lpips = method_network(suite, "gcd", "lpips") if "gcd" in spec["methods"] else None
    if lpips and lpips["checkpoint"]:  # GCD's direction search reads LPIPS's VGG-16 from the registry file
        checkpoints.add(lpips["checkpoint"])
    # networks trained here (resources/checkpoints/NAME.pt of a models: entry outside the registry: the Flowers head)
    trained = {c for c in checkpoints if c.endswith(".pt") and Path(c).stem in suite["models"]
               and Path(c).stem not in suite["checkpoints"]}
    return {
        "methods": spec["methods"],
        "experiments": experiments,
        "trained": trained,
        "generate": {f"results/cf/{e}/chunks/{m}/{c}-of-{chunks}.json" for e, m in pairs for c in range(chunks)},
        "ace_postprocess": len(experiments) * chunks if "ace" in spec["methods"] else 0,
        "merge_chunks": len(pairs),
        "metric": len(pairs) * len(spec["metrics"]),
        "checkpoints": checkpoints - trained,
        "datasets": {suite["experiments"][e]["dataset"] for e in experiments},
    }


def _assert_plan_has_every_job(counts: Counter, outputs: dict[str, list[str]], needs: dict[str, object]) -> None:
    """The dry-run plans what the suite file says a table needs: every download (and no training but of the
    unpublished Flowers head), every generation chunk, ACE's post-processing, one merge per (task, method) and every
    metric; every downloaded file is verified (its sha256 stamp is an input of the jobs that load it) before a job
    reads it."""
    trained = sorted(needs["trained"])
    assert outputs.get("train_model", []) == [x for c in trained for x in (c, c.replace(".pt", ".train.json"))], \
        "a published network must be downloaded, never trained"
    assert set(outputs["download_checkpoint"]) == needs["checkpoints"]
    assert counts["download_checkpoint"] == len(needs["checkpoints"])
    assert set(outputs["verify_checkpoint"]) == {f"{path}.sha256" for path in needs["checkpoints"]}
    assert set(outputs["generate"]) == needs["generate"] and counts["generate"] == len(needs["generate"])
    assert counts["ace_postprocess"] == needs["ace_postprocess"]
    assert counts["merge_chunks"] == needs["merge_chunks"]
    assert counts["metric"] == needs["metric"]


def test_paper_models_are_published_checkpoints_and_metrics_use_the_registry():
    suite = load_suite(PAPER)
    registry = suite["checkpoints"]
    # every network a paper experiment loads is a registry file: downloaded, never trained (train_model writes .pt),
    # but for LDCE's Flowers head, which upstream does not publish: trained on a registry backbone
    for name, spec in suite["models"].items():
        if spec["kind"] == "dino_linear":
            assert name not in registry and spec["backbone_weights"] == network_checkpoint(suite, "dino_vits8")
        else:
            assert name in registry, name
    classifier = network_checkpoint(suite, "steex_celebahq_classifier")
    assert classifier == "resources/checkpoints/steex_celebahq_classifier.tar"
    mnac = metric_networks(suite, "mnac", "celebahq_smile")["oracle"]
    assert mnac["checkpoint"] == "resources/checkpoints/steex_celebahq_oracle.tar"
    assert mnac["spec"] == {"kind": "steex_oracle"}
    assert metric_networks(suite, "fva", "celebahq_smile")["identity"]["spec"] == {"kind": "vggface2"}
    assert metric_networks(suite, "fid", "celebahq_young")["features"]["checkpoint"].endswith("fid_inception.pth")
    cout = metric_networks(suite, "cout", "celebahq_young", "ldce")["classifier"]
    assert cout["name"] == "steex_celebahq_classifier" and cout["checkpoint"].endswith(".tar")
    # generation, GCD and COUT load STEEX's 3-output classifier with its own loader (the registry's), not DiME's
    assert cout["spec"]["kind"] == registry["steex_celebahq_classifier"]["loader"] == "steex_classifier"
    # every published number names its source, for a method and a metric the table shows
    for spec in suite["tables"].values():
        for task, methods in (spec.get("published") or {}).items():
            assert task in spec["tasks"]
            for method, entries in methods.items():
                assert method in spec["methods"]
                for metric, entry in entries.items():
                    assert metric in spec["metrics"]
                    assert entry["value"] > 0 and "docs/upstream/" in entry["source"]
    # the catalog names each paper's own table
    for name, spec in suite["tables"].items():
        assert re.fullmatch(r"table\d+", name) and "table" in spec["paper"].lower(), name


def test_method_and_metric_settings_per_dataset():
    """ACE runs each dataset with its own script's settings (docs/upstream/dime_ace.md §2.7); MNAC and CD read the
    dataset's oracle (DiME's on CelebA 128, STEEX's on CelebA-HQ)."""
    suite = load_suite(PAPER)
    expected = {  # experiment: (respacing, batch, filter fraction, inpaint); K = fraction * respacing = 5
        "celeba_smile": ("50", 3, 0.1, 0.15),
        "celebahq_smile": ("25", 1, 0.2, 0.15),
        "bdd100k_forward": ("100", 1, 0.05, 0.05),
        "bdd_oia_forward": ("100", 1, 0.05, 0.05),  # no BDD-OIA script upstream: BDD-attack.sh's
    }
    for experiment, (respacing, batch, fraction, inpaint) in expected.items():
        ace = method_settings(suite, "ace", experiment)
        assert "datasets" not in ace
        assert (ace["timestep_respacing"], ace["batch_size"]) == (respacing, batch)
        assert ace["config"]["sampling_time_fraction"] == ace["postprocess"]["sampling_time_fraction"] == fraction
        assert round(fraction * int(respacing)) == 5
        assert ace["postprocess"]["sampling_inpaint"] == inpaint
        assert ace["config"]["attack_iterations"] == 50 and ace["config"]["dist_l1"] == 0.001
    assert method_settings(suite, "dime", "celeba_smile") == method_settings(suite, "dime", "celebahq_smile")
    for metric in ("mnac", "cd"):
        assert metric_networks(suite, metric, "celeba_young")["oracle"]["name"] == "dime_celeba_oracle"
        assert metric_networks(suite, metric, "celeba_young")["oracle"]["spec"] == {"kind": "celeba_oracle"}
        assert metric_networks(suite, metric, "celebahq_young")["oracle"]["name"] == "steex_celebahq_oracle"
    assert metric_networks(suite, "cout", "celeba_smile", "ace")["classifier"]["name"] == "dime_celeba_classifier"
    for experiment in ("bdd100k_forward", "bdd_oia_forward"):
        assert metric_networks(suite, "cout", experiment, "ace")["classifier"]["name"] == "steex_bdd_classifier"


def test_imagenet_pair_experiments_follow_ace_and_ldce_scripts():
    """table3's tasks are ACE's / LDCE's three class pairs, each image towards the other class
    (docs/upstream/dime_ace.md §2.6, docs/upstream/ldce_gcd_svce.md §1.5); ACE runs imagenet-attack.sh's settings, LDCE
    v1_zs's with cin256-v2 conditioned on the target class, a stretched 256² image and the 224 centre crop (§1.4, §1.6,
    §1.8)."""
    suite = load_suite(PAPER)
    pairs = {"imagenet_zebra_sorrel": (340, 339), "imagenet_cheetah_cougar": (293, 286),
             "imagenet_egyptian_persian": (285, 283)}
    assert set(suite["tables"]["table3"]["tasks"].values()) == set(pairs)
    for experiment, (a, b) in pairs.items():
        spec = suite["experiments"][experiment]
        assert {int(k): v for k, v in spec["class_targets"].items()} == {a: b, b: a}
        assert "query_label" not in spec and spec["dataset"] == "imagenet"
        ace = method_settings(suite, "ace", experiment)
        assert (ace["timestep_respacing"], ace["batch_size"]) == ("25", 1)
        assert ace["config"]["attack_iterations"] == 100 and ace["config"]["sampling_time_fraction"] == 0.2
        assert ace["config"]["multiclass"] is True and "image_resize" not in ace  # ImageFolder Resize + CenterCrop
        ldce = method_settings(suite, "ldce", experiment)
        assert ldce["ldm"] == "ldm_cin256_v2" and ldce["conditioning"] is None
        assert (ldce["image_resize"], ldce["classifier_center_crop"], ldce["batch_size"]) == ("stretch", 224, 4)
        assert {k: ldce["config"][k] for k in ("strength", "classifier_lambda", "dist_lambda",
                                               "deg_cone_projection")} == {"strength": 0.342, "classifier_lambda": 2.0,
                                                                           "dist_lambda": 0.25,
                                                                           "deg_cone_projection": 40.0}
        cout = metric_networks(suite, "cout", experiment, "ldce")["classifier"]
        assert cout["name"] == "torchvision_resnet50" and cout["spec"]["kind"] == "torchvision_resnet50"
        assert metric_networks(suite, "s3", experiment)["simsiam"]["name"] == "simsiam_resnet50_100ep"
    # LDCE's Table 1: v1_wider's settings for this experiment only (the pairs keep v1_zs's), LDCE's own targets
    everything = suite["experiments"]["imagenet_ldce_all"]
    assert everything["image_targets"] == "ldce" and everything["max_images"] == 10000
    ldce = method_settings(suite, "ldce", "imagenet_ldce_all")
    assert (ldce["ldm"], ldce["batch_size"], ldce["image_resize"], ldce["classifier_center_crop"]) == (
        "ldm_cin256_v2", 5, "stretch", 224)
    assert {k: ldce["config"][k] for k in ("strength", "classifier_lambda", "dist_lambda", "deg_cone_projection")} == {
        "strength": 0.382, "classifier_lambda": 2.3, "dist_lambda": 0.3, "deg_cone_projection": 45.0}
    assert method_settings(suite, "ldce", "imagenet_zebra_sorrel")["config"]["strength"] == 0.342
    # LDCE-txt (a variant of ldce): miniSD prompted with the target class's name, README's text-conditioned settings
    txt = method_settings(suite, "ldce_txt", "imagenet_zebra_sorrel")
    assert (txt["ldm"], txt["class_prompt"], txt["batch_size"], txt["image_resize"]) == (
        "minisd", "a photo of a {}.", 4, "stretch")
    assert {k: txt["config"][k] for k in ("strength", "classifier_lambda", "dist_lambda", "deg_cone_projection")} == {
        "strength": 0.382, "classifier_lambda": 3.95, "dist_lambda": 1.2, "deg_cone_projection": 50.0}
    assert method_settings(suite, "ldce_txt", "imagenet_ldce_all") == txt
    # GCD per dataset: its CelebA config and DiffAE on CelebA 128, the FFHQ DiffAE and CelebA-HQ config elsewhere
    gcd = method_settings(suite, "gcd", "celeba_smile")
    assert gcd["diffae"] == "gcd_celeba_diffae"
    assert suite["models"]["gcd_celeba_diffae"]["template"] == "celeba128_autoenc"
    assert {k: gcd["config"][k] for k in ("n_iters", "dae_batch_size", "min_max_step_size", "n_hessian_eigenvecs")} == {
        "n_iters": 50, "dae_batch_size": 512, "min_max_step_size": [1e-4, 4.0], "n_hessian_eigenvecs": 30}
    assert method_settings(suite, "gcd", "celebahq_smile")["diffae"] == "diffae_ffhq256_autoenc"
    assert method_settings(suite, "gcd", "celebahq_smile")["config"]["n_iters"] == 52
    # CelebA-HQ keeps LDCE-txt's miniSD and its prompts
    assert method_settings(suite, "ldce", "celebahq_smile")["ldm"] == "minisd"
    assert method_settings(suite, "ldce", "celebahq_smile")["conditioning"]["31"][1] == "a photo of a smiling person"


def _fake_roots(root: Path) -> dict[str, Path]:
    """Tiny data roots in the upstream layouts of CelebA (Kaggle CSVs), BDD100k (images/100k/val), BDD-OIA (lastframe:
    data/ and the val JSONs), ImageNet val (class folders) and CheXpert (valid.csv + valid/patient*/study*/*.jpg)."""
    write_synthetic_celeba(root / "celeba", n_identities=2, images_per_identity=2, image_size=32, seed=0)
    fake_imagenet_val(root / "imagenet" / "val")
    (root / "bdd" / "images" / "100k" / "val").mkdir(parents=True)
    for k in range(3):
        Image.new("RGB", (16, 8)).save(root / "bdd" / "images" / "100k" / "val" / f"b{k}.jpg")
    fake_bdd_oia(root / "bdd_oia")
    fake_chexpert(root / "CheXpert-v1.0-small")
    fake_pets(root / "pets")
    fake_flowers(root / "flowers")
    return {"celeba": root / "celeba", "bdd100k": root / "bdd", "bdd_oia": root / "bdd_oia",
            "imagenet": root / "imagenet" / "val", "chexpert": root / "CheXpert-v1.0-small",
            "oxford_pets": root / "pets", "flowers102": root / "flowers"}


@pytest.mark.parametrize("table", ["table1", "table2", "table3", "table4", "table5", "table7", "table8",
                                   "table9", "table10"])
def test_catalog_table_dry_run_plans_the_whole_table(tmp_path, table):
    wf = copy_workflow(tmp_path)
    roots = _fake_roots(tmp_path / "data")
    result = snakemake(["-n", "--config", "suite=paper",
                        "data_roots={" + ", ".join(f"{k}: {v}" for k, v in roots.items()) + "}",
                        "--", f"results/tables/{table}.csv"], wf)
    assert result.returncode == 0, result.stderr
    counts, outputs = parse_plan(result.stdout + result.stderr)
    chunks = int(yaml.safe_load((wf / "config.yaml").read_text())["chunks"])
    needs = _table_needs(load_suite(wf / "workflow" / "suites" / "paper.yaml"), table, chunks)
    assert counts["index_dataset"] == len(needs["datasets"])
    assert set(outputs["index_dataset"]) == {f"results/data/{d}/index.csv" for d in needs["datasets"]}
    _assert_plan_has_every_job(counts, outputs, needs)
    assert outputs["table"] == [f"results/tables/{table}.{ext}" for ext in ("csv", "md", "tex")]
    # as the tables read today: table1 = 2 tasks x (DiME, ACE) x 8 metrics on DiME's CelebA networks (DDPM,
    # classifier, oracle), VGGFace2, Inception and VGG-19; table2 = ACE on BDD100k x 4 metrics (DDPM, classifier,
    # Inception); table3 = 3 ImageNet pairs x (ACE, LDCE-cls, LDCE-txt) x 5 metrics (openai's DDPM, torchvision's
    # ResNet-50, cin256-v2, miniSD, SimSiam, Inception); table4 = LDCE-cls and -txt on all ImageNet classes x 5
    # metrics (ResNet-50, cin256-v2, miniSD, SimSiam, Inception), reading LDCE's per-image targets; table5 = ACE on
    # BDD-OIA x 4 metrics (table2's networks); table7 = GCD on CelebA 128 x 8 metrics (GCD's CelebA DiffAE, DiME's
    # classifier and oracle, LPIPS's VGG-16, VGGFace2, Inception), one direction search per task; table8 = GCD on
    # six CheXpert findings x 3 metrics (GCD's CheXpert DiffAE and DenseNet-264, LPIPS's VGG-16, Inception); table9 =
    # LDCE-txt on Oxford-IIIT Pets x 5 metrics (the zero-shot OpenCLIP ViT-B-32, miniSD, SimSiam, Inception); table10
    # = LDCE-txt on Flowers-102 x 5 metrics (DINO ViT-S/8 under a head trained here, miniSD, SimSiam, Inception)
    sizes = {"table1": (6, 4, 32), "table2": (3, 1, 4), "table3": (6, 9, 45), "table4": (5, 2, 10),
             "table5": (3, 1, 4), "table7": (6, 2, 16), "table8": (4, 6, 18), "table9": (4, 1, 5),
             "table10": (4, 1, 5)}[table]
    assert (len(needs["checkpoints"]), needs["merge_chunks"], needs["metric"]) == sizes
    assert counts.get("gcd_direction", 0) == (len(needs["experiments"]) if "gcd" in needs["methods"] else 0)
    ldce_data = ["resources/data/ldce/image_idx_to_tgt.yaml", "resources/data/ldce/synset_closest_idx.yaml",
                 "resources/data/ldce/imagenet_classnames.py"]  # per-image targets (table4), LDCE-txt's class names
    assert outputs.get("fetch_ldce_targets", []) == (ldce_data if table in ("table3", "table4") else [])
    # table9: LDCE's Pets targets and class names (generation reads both, COUT the class names)
    pets_data = ["resources/data/ldce/pets_closest_indices.json", "resources/data/ldce/pets_idx_to_label.json"]
    assert outputs.get("fetch_ldce_pets", []) == (pets_data if table == "table9" else [])
    flowers_data = ["resources/data/ldce/flowers_closest_indices.json", "resources/data/ldce/flowers_idx_to_label.json"]
    assert outputs.get("fetch_ldce_flowers", []) == (flowers_data if table == "table10" else [])
    # only table10 trains a network: LDCE's unpublished Flowers head, on the downloaded DINO backbone
    assert sorted(needs["trained"]) == (["resources/checkpoints/dino_flowers_linear.pt"] if table == "table10" else [])


def test_chexpert_experiments_follow_gcd_configs():
    """table8's tasks are GCD's six CheXpert configs (gcd/configs/.../chexpert/dense_net/<finding>/config.yaml,
    docs/upstream/ldce_gcd_svce.md §2.3): the query label is the output of GCD's DenseNetCheXpert, read by its own
    loader; GCD runs its CheXpert configuration on its one-channel chexpert224_autoenc DiffAE."""
    from cfx.data.layouts import GCD_CHEXPERT_OUTPUTS

    suite = load_suite(PAPER)
    queries = {"atelectasis": 0, "lung_lesion": 6, "lung_opacity": 7, "pleural_effusion": 9, "pneumonia": 11,
               "support_devices": 13}
    table = suite["tables"]["table8"]
    assert table["methods"] == ["gcd"] and table["metrics"] == ["fid", "sfid", "flip_rate"]
    assert not table.get("published")
    assert table["tasks"] == {task: f"chexpert_{task}" for task in queries}
    for task, query in queries.items():
        experiment = suite["experiments"][f"chexpert_{task}"]
        assert (experiment["dataset"], experiment["split"], experiment["image_size"]) == ("chexpert", "val", 224)
        assert experiment["query_label"] == query
        assert GCD_CHEXPERT_OUTPUTS[query].lower().replace(" ", "_") == task
        assert experiment["classifier"] == "gcd_chexpert_classifier" and experiment["methods"] == ["gcd"]
        gcd = method_settings(suite, "gcd", f"chexpert_{task}")
        assert gcd["diffae"] == "gcd_chexpert_diffae"
        assert {k: gcd["config"][k] for k in ("n_iters", "n_steps_dae", "dae_batch_size", "min_max_step_size",
                                              "n_hessian_eigenvecs", "T_encode", "T_render")} == {
            "n_iters": 84, "n_steps_dae": 8, "dae_batch_size": 128, "min_max_step_size": [1e-4, 4.0],
            "n_hessian_eigenvecs": 6, "T_encode": 250, "T_render": 100}
    assert suite["datasets"]["chexpert"]["layout"] == "chexpert"
    assert suite["models"]["gcd_chexpert_diffae"]["template"] == "chexpert224_autoenc"
    clf = suite["models"]["gcd_chexpert_classifier"]
    assert clf["kind"] == suite["checkpoints"]["gcd_chexpert_classifier"]["loader"] == "gcd_chexpert_classifier"
    assert network_checkpoint(suite, "gcd_chexpert_classifier") == "resources/checkpoints/gcd_chexpert_classifier.ckpt"
    # the other datasets keep their GCD configurations
    assert method_settings(suite, "gcd", "celeba_smile")["config"]["n_hessian_eigenvecs"] == 30
    assert method_settings(suite, "gcd", "celebahq_smile")["config"]["n_iters"] == 52


def test_pets_experiment_follows_v1_pets():
    """table9: LDCE-txt with configs/ldce/v1_pets.yaml and the README's Pets overrides
    (docs/upstream/ldce_gcd_svce.md §1.6), each test image towards its LDCE Pets target (§1.5), explaining the zero-shot
    OpenCLIP ViT-B-32 (§1.4)."""
    suite = load_suite(PAPER)
    table = suite["tables"]["table9"]
    assert table["methods"] == ["ldce_txt"] and table["tasks"] == {"pets": "pets"} and not table.get("published")
    assert table["metrics"] == ["fid", "sfid", "s3", "cout", "flip_rate"]
    experiment = suite["experiments"]["pets"]
    assert (experiment["dataset"], experiment["split"], experiment["image_size"], experiment["image_targets"]) == (
        "oxford_pets", "test", 256, "ldce_pets")
    assert suite["datasets"]["oxford_pets"]["layout"] == "oxford_pets"
    txt = method_settings(suite, "ldce_txt", "pets")
    assert (txt["ldm"], txt["class_prompt"], txt["batch_size"]) == ("minisd", "a photo of a {}, a type of pet.", 4)
    assert txt["class_names"] == "resources/data/ldce/pets_idx_to_label.json"
    assert "image_resize" not in txt and "classifier_center_crop" not in txt  # the layout's stretch; CLIP crops
    assert {k: txt["config"][k] for k in ("strength", "classifier_lambda", "dist_lambda", "deg_cone_projection",
                                          "scale", "ddim_steps", "guidance", "cone_projection_type")} == {
        "strength": 0.382, "classifier_lambda": 4.2, "dist_lambda": 2.4, "deg_cone_projection": 45.0, "scale": 3.0,
        "ddim_steps": 500, "guidance": "projected", "cone_projection_type": "zero_binning"}
    assert method_settings(suite, "ldce_txt", "imagenet_zebra_sorrel")["config"]["deg_cone_projection"] == 50.0
    clf = suite["models"][experiment["classifier"]]
    assert clf["kind"] == suite["checkpoints"]["openclip_vit_b32_laion2b"]["loader"] == "openclip_zero_shot"
    assert (clf["prompt"], clf["class_names"]) == ("a photo of a {}, a type of pet.", txt["class_names"])
    assert network_checkpoint(suite, "openclip_vit_b32_laion2b") == "resources/checkpoints/openclip_vit_b32_laion2b.bin"
    assert suite["checkpoints"]["openclip_vit_b32_laion2b"]["url"] == (
        "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/open_clip_pytorch_model.bin")
    cout = metric_networks(suite, "cout", "pets", "ldce_txt")["classifier"]
    assert cout["name"] == "openclip_vit_b32_laion2b" and cout["spec"]["kind"] == "openclip_zero_shot"


def test_table6_dry_run_plans_the_whole_table(tmp_path):
    wf = copy_workflow(tmp_path)
    fake_celebahq(tmp_path / "hq")
    result = snakemake(["-n", "--config", "suite=paper", f"data_roots={{celebahq: {tmp_path / 'hq'}}}",
                        "--", "results/tables/table6.csv"], wf)
    assert result.returncode == 0, result.stderr
    counts, outputs = parse_plan(result.stdout + result.stderr)
    chunks = int(yaml.safe_load((wf / "config.yaml").read_text())["chunks"])
    needs = _table_needs(load_suite(wf / "workflow" / "suites" / "paper.yaml"), "table6", chunks)
    assert counts["index_dataset"] == 1
    _assert_plan_has_every_job(counts, outputs, needs)
    assert counts["gcd_direction"] == len(needs["experiments"])  # one direction search per task
    assert outputs["table"] == ["results/tables/table6.csv", "results/tables/table6.md", "results/tables/table6.tex"]
    # table6 as it reads today (the other numbers follow from the suite file): 9 checkpoints (with GCD's LPIPS VGG-16
    # and the FID Inception read from resources/checkpoints, not $TORCH_HOME), 2 tasks x 4 methods
    assert "resources/checkpoints/torchvision_vgg16.pth" in needs["checkpoints"]
    assert "resources/checkpoints/fid_inception.pth" in needs["checkpoints"]
    assert len(needs["checkpoints"]) == 9 and needs["merge_chunks"] == 8 and needs["metric"] == 64


def test_table6_without_data_root_says_what_to_download(tmp_path):
    wf = copy_workflow(tmp_path)
    result = snakemake(["-n", "--config", "suite=paper", "--", "results/tables/table6.csv"], wf)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    for needed in ("CelebAMask-HQ-attribute-anno.txt", "https://github.com/switchablenorms/CelebAMask-HQ",
                   "list_eval_partition.csv", "data_roots: {celebahq:"):
        assert needed in message, message


def test_minival_experiment_plans_the_upstream_list_download(tmp_path):
    """DiME's / ACE's CelebA mini-val runs read upstream's utils/minival.csv, fetched (pinned) before generation."""
    wf = copy_workflow(tmp_path)
    roots = _fake_roots(tmp_path / "data")
    result = snakemake(["-n", "--config", "suite=paper", f"data_roots={{celeba: {roots['celeba']}}}",
                        "--", "results/cf/celeba_smile_minival/dime.merged.json"], wf)
    assert result.returncode == 0, result.stderr
    counts, outputs = parse_plan(result.stdout + result.stderr)
    assert outputs["fetch_dime_minival"] == ["resources/data/dime/minival.csv"]
    chunks = int(yaml.safe_load((wf / "config.yaml").read_text())["chunks"])
    assert counts["generate"] == chunks and counts["merge_chunks"] == 1 and "train_model" not in counts


def test_svce_imagenet_run_is_planned_by_the_default_target(tmp_path):
    """SVCE's ImageNet run has no table (its repository saves figures only): the default target of the paper suite
    plans its WordNet files, the Madry + FT download, every chunk and its figures; a run restricted to some tables
    (config tables) leaves it out."""
    wf = copy_workflow(tmp_path)
    roots = {**_fake_roots(tmp_path / "data"), "celebahq": tmp_path / "hq"}
    fake_celebahq(tmp_path / "hq")
    data_roots = "data_roots={" + ", ".join(f"{k}: {v}" for k, v in roots.items()) + "}"
    result = snakemake(["-n", "--config", "suite=paper", data_roots], wf)
    assert result.returncode == 0, result.stderr
    counts, outputs = parse_plan(result.stdout + result.stderr)
    chunks = int(yaml.safe_load((wf / "config.yaml").read_text())["chunks"])
    assert outputs["fetch_svce_hierarchy"] == ["resources/data/svce/IN_info/wordnet.is_a.txt",
                                               "resources/data/svce/IN_info/words.txt",
                                               "resources/data/svce/IN_info/imagenet_class_index.json"]
    assert {f"results/cf/imagenet_svce/chunks/svce/{c}-of-{chunks}.json" for c in range(chunks)} <= set(
        outputs["generate"])
    assert "resources/checkpoints/svce_madry_ft.pt" in outputs["download_checkpoint"]
    assert "results/figures/imagenet_svce/svce_radii.png" in outputs["svce_figure"]
    assert "results/figures/imagenet_svce/svce_grid.png" in outputs["grid_figure"]
    assert not any("imagenet_svce" in path for path in outputs.get("metric", []))  # no table reads it
    # every catalog table is in the default target too
    suite = load_suite(wf / "workflow" / "suites" / "paper.yaml")
    assert {f"results/tables/{t}.csv" for t in suite["tables"]} <= set(outputs["table"])
    restricted = snakemake(["-n", "--config", "suite=paper", data_roots, "tables=[table1]"], wf)
    assert restricted.returncode == 0, restricted.stderr
    assert "imagenet_svce" not in restricted.stdout + restricted.stderr

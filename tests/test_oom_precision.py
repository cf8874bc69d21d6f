"""CUDA out-of-memory retries (simulated on CPU) and the UNet precision setting of generation."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from cfx.data.celeba import build_index
from cfx.data.synthetic import write_synthetic_celeba
from cfx.generate import divided_batch_size, generate_chunk, load_generation_models
from cfx.methods import dime
from cfx.models.adm import create_model
from cfx.models.classifier import DenseNetClassifier, save_celeba_classifier
from cfx.runtime.precision import apply_precision, resolve_precision
from cfx.runtime.retry import NotRetried, is_out_of_memory, retry_only_out_of_memory

ROOT = Path(__file__).resolve().parent.parent
FLAGS = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
             num_heads=2, learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True)
ARCH = dict(growth_rate=8, block_config=[1, 1], num_init_features=16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("oom")
    data = write_synthetic_celeba(root / "data", n_identities=30, images_per_identity=3, image_size=32, seed=0,
                                  progress=False)
    build_index(data, root / "index.csv")
    torch.manual_seed(0)
    unet = create_model(**FLAGS)
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(0.3)
    torch.save(unet.state_dict(), root / "ddpm.pt")
    save_celeba_classifier(DenseNetClassifier(**ARCH), root / "classifier.pt")
    return root


def _kwargs(root: Path, tree: Path, batch_size: int = 2, flags: dict | None = None) -> dict:
    return dict(
        experiment={"dataset": "d", "split": "val", "image_size": 16, "query_label": 31, "classifier": "clf",
                    "ddpm": "ddpm", "max_images": 6},
        method="dime",
        method_spec={"timestep_respacing": "20", "batch_size": batch_size,
                     "config": {"start_step": 3, "classifier_scales": [8], "l_perc": 0.0}},
        model_specs={"ddpm": {"flags": flags or FLAGS, "diffusion": {"diffusion_steps": 100, "learn_sigma": True}},
                     "clf": {"arch": ARCH}},
        index_csv=root / "index.csv",
        checkpoints={"classifier": root / "classifier.pt", "ddpm": root / "ddpm.pt"},
        chunk=0, chunks=1, seed=4, tree_root=tree, manifest_path=tree / "chunks" / "dime" / "0-of-1.json",
        device="cpu", progress=False,
    )


def test_divided_batch_size():
    assert [divided_batch_size(16, 2 ** (attempt - 1)) for attempt in (1, 2, 3, 4, 5, 6)] == [16, 8, 4, 2, 1, 1]
    assert divided_batch_size(3, 2) == 1
    with pytest.raises(ValueError):
        divided_batch_size(4, 0)


def test_oom_fails_the_chunk_keeps_finished_images_and_the_halved_retry_completes_it(setup, monkeypatch, caplog):
    reference = generate_chunk(**_kwargs(setup, setup / "reference"))
    # simulated memory pressure: the first batch of 2 fits, afterwards only batches of 1 do
    state = {"limit": 2}

    def generate(images, *args, **kwargs):
        if images.shape[0] > state["limit"]:
            raise torch.cuda.OutOfMemoryError(f"simulated: batch {images.shape[0]} > {state['limit']}")
        state["limit"] = 1
        return dime.generate(images, *args, **kwargs)

    monkeypatch.setattr("cfx.generate.get_method", lambda name: SimpleNamespace(generate=generate))
    tree = setup / "oom"
    kwargs = _kwargs(setup, tree)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        generate_chunk(**kwargs, batch_divisor=1)
    assert "CUDA out of memory at batch size 2" in caplog.text and "--batch-divisor 2" in caplog.text
    assert not kwargs["manifest_path"].exists()
    assert len(list((tree / "Results" / "dime").glob("*/*/Info/*.txt"))) == 2  # the first batch is kept
    retried = generate_chunk(**kwargs, batch_divisor=2)  # attempt 2: half the batch
    assert retried["generated_now"] == 4 and retried["batch_size"] == 1 and retried["n"] == 6
    # per-image seeds: the batch size changes nothing (DiME) but float rounding (batched kernels sum in another order)
    assert len(retried["records"]) == len(reference["records"])
    for got, want in zip(retried["records"], reference["records"], strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (want["stem"], key)
            else:
                assert got[key] == value, (want["stem"], key)


def test_a_batch_dependent_method_regenerates_when_only_its_batch_size_changes(setup, tmp_path):
    """ACE's results depend on the batch (cfx.methods.batch_size_matters): its chunk signature holds the batch size,
    so a rerun with another one regenerates instead of labelling old images with the new batch size; DiME's do not
    (test_rerun_with_other_settings_or_networks_regenerates_the_chunk_and_a_resume_keeps_it)."""
    kwargs = _kwargs(setup, tmp_path / "tree")
    kwargs.update(method="ace", manifest_path=tmp_path / "tree" / "chunks" / "ace" / "0-of-1.json",
                  method_spec={"timestep_respacing": "20", "batch_size": 2, "ext": "png",
                               "config": {"attack_iterations": 1, "sampling_time_fraction": 0.1}})
    assert generate_chunk(**kwargs)["generated_now"] == 6
    assert generate_chunk(**kwargs)["generated_now"] == 0
    rerun = generate_chunk(**{**kwargs, "method_spec": {**kwargs["method_spec"], "batch_size": 3}})
    assert rerun["generated_now"] == 6 and rerun["batch_size"] == 3


def test_only_out_of_memory_errors_are_retried(tmp_path):
    output = tmp_path / "chunks" / "0-of-1.json"
    with pytest.raises(torch.cuda.OutOfMemoryError), retry_only_out_of_memory(output, 1):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with retry_only_out_of_memory(output, 2):  # an OOM leaves no marker: the retry runs
        pass
    with pytest.raises(ValueError), retry_only_out_of_memory(output, 1):
        raise ValueError("image x.jpg is corrupt")
    with pytest.raises(NotRetried, match="x.jpg is corrupt"), retry_only_out_of_memory(output, 2):
        raise AssertionError("the body of a retry that cannot help must not run")
    with retry_only_out_of_memory(output, 1):  # a new run starts afresh
        pass
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"))
    assert not is_out_of_memory(RuntimeError("size mismatch for weight"))


def test_precision_resolution_and_conversion():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", "cpu")
    unet = create_model(**FLAGS)
    for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)):
        assert apply_precision(unet, precision).dtype == dtype
        assert unet.time_embed[0].weight.dtype == torch.float32  # as upstream convert_to_fp16
    with pytest.raises(ValueError):
        apply_precision(unet, "auto")


def test_generation_models_follow_the_precision_setting(setup):
    kwargs = _kwargs(setup, setup / "unused", flags={**FLAGS, "use_fp16": True})
    spec = dict(method_spec=kwargs["method_spec"], experiment=kwargs["experiment"], model_specs=kwargs["model_specs"],
                checkpoints=kwargs["checkpoints"], device=torch.device("cpu"))
    assert load_generation_models(**spec)["unet"].dtype == torch.float32  # auto on CPU overrides use_fp16
    assert load_generation_models(**spec, precision="fp16")["unet"].dtype == torch.float16
    assert load_generation_models(**spec, precision="bf16")["unet"].dtype == torch.bfloat16


def test_compile_setting_wraps_the_unet_in_torch_compile(setup, monkeypatch):
    compiled = []

    def fake_compile(module):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    kwargs = _kwargs(setup, setup / "unused")
    spec = dict(method_spec=kwargs["method_spec"], experiment=kwargs["experiment"], model_specs=kwargs["model_specs"],
                checkpoints=kwargs["checkpoints"], device=torch.device("cpu"))
    models = load_generation_models(**spec)
    assert compiled == []
    assert load_generation_models(**spec, compile_unet=True)["unet"] is compiled[0]
    assert type(compiled[0]) is type(models["unet"])


SITECUSTOMIZE = """
import os
import sys

if os.environ.get("CFX_TEST_OOM_ABOVE") and sys.argv and "generate" in os.path.basename(sys.argv[0]):
    import torch

    import cfx.methods.dime as dime

    _real, _limit = dime.generate, int(os.environ["CFX_TEST_OOM_ABOVE"])

    def _generate(images, *args, **kwargs):
        if images.shape[0] > _limit:
            raise torch.cuda.OutOfMemoryError(f"simulated: batch {images.shape[0]} > {_limit}")
        return _real(images, *args, **kwargs)

    dime.generate = _generate

if os.environ.get("CFX_TEST_FAIL") and sys.argv and "generate" in os.path.basename(sys.argv[0]):
    import cfx.methods.dime as dime

    def _failing(*args, **kwargs):
        raise ValueError("simulated: not a memory error")

    dime.generate = _failing
"""


@pytest.mark.slow
def test_generate_rule_retries_an_oom_with_half_the_batch(tmp_path):
    """The real rule: attempt 1 runs the ci batch (3 images of chunk 0) and hits the simulated OOM; Snakemake
    retries, the resource batch_divisor becomes 2 and the chunk completes in batches of 2."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("workflow", "envs", "profiles"):
        shutil.copytree(ROOT / name, tmp_path / name)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "CFX_TEST_OOM_ABOVE": "2",
           "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    target = "results/cf/celeba_smile/chunks/dime/0-of-2.json"
    ace_target = "results/cf/celeba_smile/chunks/ace/0-of-2.json"
    result = subprocess.run([sys.executable, "-m", "snakemake", target, ace_target, "--cores", "2", "--config",
                             "scale=ci"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    (tmp_path / "snakemake.out").write_text(output)
    assert "simulated: batch 3 > 2" in output and "Trying to restart job" in output, output[-4000:]
    assert "batch_divisor=2" in output
    manifest = json.loads((tmp_path / target).read_text())
    assert manifest["batch_size"] == 2 and manifest["n"] == 3

    # the batch size: DiME's images do not depend on it, so changing it re-runs nothing (no merge or metric either);
    # ACE's do (cfx.methods.batch_size_matters), so its chunk is planned again and its images regenerated
    suite_path = tmp_path / "workflow" / "suites" / "mini.yaml"
    suite = yaml.safe_load(suite_path.read_text())
    for method in ("dime", "ace"):
        suite["scales"]["ci"]["methods"][method]["batch_size"] = 3
    suite_path.write_text(yaml.safe_dump(suite, sort_keys=False))  # params are compared by repr: keep the key order
    planned = subprocess.run([sys.executable, "-m", "snakemake", "-n", target, ace_target, "--config", "scale=ci"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    plan = planned.stdout + planned.stderr
    assert planned.returncode == 0, plan[-3000:]
    assert "method=ace" in plan and "method=dime" not in plan, plan[-3000:]

    # a failure other than out of memory is not retried: attempts 2-4 stop at once, naming the first error
    failed = subprocess.run([sys.executable, "-m", "snakemake", "-f", target, "--cores", "1", "--config", "scale=ci"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**env, "CFX_TEST_OOM_ABOVE": "", "CFX_TEST_FAIL": "1"})
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "attempt 2 not run: an earlier attempt failed" in output, output[-4000:]
    assert "simulated: not a memory error" in output
    assert (tmp_path / "results" / "cf" / "celeba_smile" / "Results" / "dime").is_dir()  # the images are kept


def test_rerun_with_other_settings_or_networks_regenerates_the_chunk_and_a_resume_keeps_it(setup, tmp_path):
    """Snakemake reruns a generation job when its params or inputs change, but the images of the old run are not
    declared outputs: the chunk's settings record makes the rerun regenerate them instead of keeping stale ones."""
    kwargs = _kwargs(setup, tmp_path / "tree")
    first = generate_chunk(**kwargs)
    assert first["generated_now"] == 6
    assert generate_chunk(**kwargs)["generated_now"] == 0  # same settings (a killed job's rerun): resumed
    assert generate_chunk(**{**kwargs, "method_spec": {**kwargs["method_spec"], "batch_size": 3}})[
        "generated_now"] == 0  # the batch size changes no image (per-image generators)
    other = {**kwargs["method_spec"], "config": {**kwargs["method_spec"]["config"], "classifier_scales": [15]}}
    assert generate_chunk(**{**kwargs, "method_spec": other})["generated_now"] == 6
    retrained = tmp_path / "ddpm.pt"  # same weights, a new file: a retrained or re-downloaded network
    shutil.copy(setup / "ddpm.pt", retrained)
    rerun = generate_chunk(**{**kwargs, "method_spec": other,
                              "checkpoints": {**kwargs["checkpoints"], "ddpm": retrained}})
    assert rerun["generated_now"] == 6
    infos = list((tmp_path / "tree" / "Results" / "dime").glob("*/*/Info/*.txt"))
    assert len(infos) == 6  # no stale copies in other subsets

"""Method variants (<method>_<label>, cfx.methods.implementation) in the workflow: a second ACE row with its own
settings gets its own attack, post-processing, merge and metrics; a bad method name stops the plan with its name."""

import yaml

from tests.factories.workflow import copy_workflow, parse_plan, snakemake


def _with_methods(wf, extra: dict) -> None:
    path = wf / "workflow" / "suites" / "mini.yaml"
    suite = yaml.safe_load(path.read_text())
    suite["methods"].update(extra)
    for name in extra:
        suite["experiments"]["celeba_smile"]["methods"].append(name)
        suite["tables"]["table1"]["methods"].append(name)
    path.write_text(yaml.safe_dump(suite, sort_keys=False))


def test_ace_variant_plans_its_own_attack_postprocessing_and_metrics(tmp_path):
    wf = copy_workflow(tmp_path)
    suite = yaml.safe_load((wf / "workflow" / "suites" / "mini.yaml").read_text())
    l2 = {**suite["methods"]["ace"], "config": {**suite["methods"]["ace"]["config"], "dist_l1": 0.0, "dist_l2": 0.01}}
    _with_methods(wf, {"ace_l2": l2})
    result = snakemake(["-n", "--", "results/tables/table1.csv"], wf)
    assert result.returncode == 0, result.stderr
    counts, outputs = parse_plan(result.stdout + result.stderr)
    chunks = int(yaml.safe_load((wf / "config.yaml").read_text())["chunks"])
    variant = {f"results/cf/celeba_smile/chunks/ace_l2_explanation/{c}-of-{chunks}.json" for c in range(chunks)}
    assert variant <= set(outputs["ace_postprocess"])
    assert {f"results/cf/celeba_smile/chunks/ace_l2/{c}-of-{chunks}.json" for c in range(chunks)} <= set(
        outputs["generate"])
    assert "results/cf/celeba_smile/ace_l2.merged.json" in outputs["merge_chunks"]
    assert counts["ace_postprocess"] == 4 * chunks  # a table's rows run on every task: ace and ace_l2, 2 tasks
    assert any(p.startswith("results/metrics/celeba_smile/ace_l2/") for p in outputs["metric"])


def test_unknown_method_name_stops_the_plan(tmp_path):
    wf = copy_workflow(tmp_path)
    suite = yaml.safe_load((wf / "workflow" / "suites" / "mini.yaml").read_text())
    _with_methods(wf, {"gcd_fast": suite["methods"]["gcd"]})
    result = snakemake(["-n", "--", "results/tables/table1.csv"], wf)
    message = result.stdout + result.stderr
    assert result.returncode != 0 and "gcd_fast" in message and "cannot have variants" in message

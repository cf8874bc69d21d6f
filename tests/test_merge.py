"""Merge + sanity check: every image exactly once, a complete chunk set, flip rate threshold."""

import json

import pytest

from cfx.generate import chunk_positions
from cfx.merge import SanityError, merge_chunks


def _manifest(path, chunk, chunks, records, total, method="dime"):
    path.write_text(json.dumps({"method": method, "chunk": chunk, "chunks": chunks, "n": len(records),
                                "n_expected_total": total, "records": records}))
    return path


def _record(i, flipped=True):
    return {"stem": str(i).zfill(7), "label": 1, "pred": 1, "target": 0, "cf_pred": 0 if flipped else 1,
            "bkl": 0.1, "l_1": 0.01}


def test_chunks_partition_the_images_like_upstream():
    chunks = [chunk_positions(10, c, 3) for c in range(3)]
    assert chunks[0] == [0, 3, 6, 9] and chunks[2] == [2, 5, 8]
    assert sorted(sum(chunks, [])) == list(range(10))
    with pytest.raises(ValueError, match="outside"):
        chunk_positions(10, 3, 3)


def test_merge_writes_summary_and_flip_rate(tmp_path):
    paths = [_manifest(tmp_path / f"{c}.json", c, 2, [_record(i, i != 3) for i in chunk_positions(6, c, 2)], 6)
             for c in range(2)]
    out = tmp_path / "merged.json"
    merged = merge_chunks(paths, tree_root=tmp_path / "tree", method="dime", out_path=out)
    assert merged["n"] == 6 and merged["flip_rate"] == pytest.approx(5 / 6)
    assert [r["stem"] for r in json.loads(out.read_text())["records"]] == [str(i).zfill(7) for i in range(6)]
    assert (tmp_path / "tree/Results/dime/summary.yaml").exists()


def test_merge_refuses_incomplete_runs(tmp_path):
    only_first = [_manifest(tmp_path / "0.json", 0, 2, [_record(i) for i in chunk_positions(6, 0, 2)], 6)]
    with pytest.raises(SanityError, match="complete set"):
        merge_chunks(only_first, tree_root=tmp_path, method="dime", out_path=tmp_path / "m.json")
    short = [_manifest(tmp_path / "s.json", 0, 1, [_record(i) for i in range(5)], 6)]
    with pytest.raises(SanityError, match="merged 5 images but the experiment has 6"):
        merge_chunks(short, tree_root=tmp_path, method="dime", out_path=tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_merge_flip_rate_threshold_keeps_images_and_names_the_setting(tmp_path):
    paths = [_manifest(tmp_path / "0.json", 0, 1, [_record(i, i == 0) for i in range(4)], 4)]
    with pytest.raises(SanityError, match="min_flip_rate"):
        merge_chunks(paths, tree_root=tmp_path / "tree", method="dime", out_path=tmp_path / "m.json",
                     min_flip_rate=0.5)
    assert not (tmp_path / "m.json").exists()

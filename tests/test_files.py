"""cfx.runtime.files: the atomic writer every module uses (a failure keeps the old file and leaves no temporary)."""

import json
import os

import pytest

from cfx.runtime.files import atomic_path, write_json_atomic, write_text_atomic


def test_success_replaces_failure_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".csv" and tmp.name.startswith(".table.tmp")
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]
    write_json_atomic(target.with_suffix(".json"), {"n": 3})
    assert json.loads(target.with_suffix(".json").read_text()) == {"n": 3}


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        path = write_text_atomic(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o664

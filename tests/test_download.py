"""Verified downloads (cfx.runtime.download) against a loopback HTTP server: retries, truncation, checksums, trust on
first use, archive members, files placed by hand; the paper registry; the download rule end to end."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from cfx.runtime import download as dl
from cfx.runtime.download import ChecksumError, DownloadError, download, fetch_checkpoint

ROOT = Path(__file__).resolve().parent.parent
FAST = {"retries": 2, "backoff": 0.01, "timeout": 5.0, "progress": False}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """A loopback HTTP server whose answers per path are queued: ``(status, body, extra)`` with extra
    ``declared_length`` (a Content-Length larger than the body: the connection closes early) or ``range`` (honour
    a Range request with 206). The last answer of a queue repeats. Every request is logged with its headers."""

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[int, bytes, dict]]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append((self.path, dict(self.headers)))
                queue = server.routes.get(self.path) or [(404, b"not found", {})]
                status, body, extra = queue.pop(0) if len(queue) > 1 else queue[0]
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if extra.get("range") and match and status == 200:
                    start, status = int(match.group(1)), 206
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                payload = body[start:]
                self.send_header("Content-Length", str(extra.get("declared_length", len(payload))))
                self.end_headers()
                self.wfile.write(payload[: extra.get("send", len(payload))])

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


BODY = bytes(range(256)) * 40  # 10 KiB


def test_200_downloads_the_file_atomically(server, tmp_path):
    server.routes["/ckpt.pt"] = [(200, BODY, {})]
    result = download(server.url("/ckpt.pt"), tmp_path / "ckpt.pt", sha256=sha(BODY), **FAST)
    assert (tmp_path / "ckpt.pt").read_bytes() == BODY
    assert result.sha256 == sha(BODY) and result.size == len(BODY)
    assert leftovers(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


def test_500_then_200_is_retried(server, tmp_path):
    server.routes["/flaky"] = [(500, b"oops", {}), (503, b"busy", {}), (200, BODY, {})]
    download(server.url("/flaky"), tmp_path / "f.pt", **FAST)
    assert (tmp_path / "f.pt").read_bytes() == BODY
    assert server.hits("/flaky") == 3


def test_persistent_500_fails_after_the_retries(server, tmp_path):
    server.routes["/down"] = [(500, b"oops", {})]
    with pytest.raises(DownloadError, match=r"failed after 3 attempts.*HTTP 500"):
        download(server.url("/down"), tmp_path / "d.pt", **FAST)
    assert server.hits("/down") == 3
    assert leftovers(tmp_path) == []


def test_404_fails_at_once_with_the_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404.*/gone.*moved or was removed"):
        download(server.url("/gone"), tmp_path / "g.pt", **FAST)
    assert server.hits("/gone") == 1
    assert leftovers(tmp_path) == []


def test_truncated_body_is_retried_then_a_clear_error_and_no_file(server, tmp_path):
    server.routes["/short"] = [(200, BODY, {"declared_length": len(BODY) + 1000})]
    with pytest.raises(DownloadError, match=rf"truncated body: received {len(BODY)} of {len(BODY) + 1000} bytes"):
        download(server.url("/short"), tmp_path / "s.pt", **FAST)
    assert server.hits("/short") == 3
    assert leftovers(tmp_path) == []


def test_truncated_body_then_a_full_one_succeeds(server, tmp_path):
    server.routes["/once"] = [(200, BODY, {"send": 1000}), (200, BODY, {})]
    download(server.url("/once"), tmp_path / "o.pt", sha256=sha(BODY), **FAST)
    assert (tmp_path / "o.pt").read_bytes() == BODY


def test_a_truncated_download_resumes_with_a_range_request(server, tmp_path):
    server.routes["/resume"] = [(200, BODY, {"send": 4000, "range": True}), (200, BODY, {"range": True})]
    download(server.url("/resume"), tmp_path / "r.pt", sha256=sha(BODY), **FAST)
    assert (tmp_path / "r.pt").read_bytes() == BODY
    assert server.requests[-1][1].get("Range") == "bytes=4000-"


def test_wrong_sha256_is_a_clear_error_and_leaves_nothing(server, tmp_path):
    server.routes["/ckpt.pt"] = [(200, BODY, {})]
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        download(server.url("/ckpt.pt"), tmp_path / "ckpt.pt", sha256=wrong, **FAST)
    message = str(err.value)
    assert wrong in message and sha(BODY) in message and server.url("/ckpt.pt") in message
    assert leftovers(tmp_path) == []
    assert server.hits("/ckpt.pt") == 1  # a wrong digest is not retried


def test_an_html_page_is_not_taken_for_the_file(server, tmp_path):
    server.routes["/quota"] = [(200, b"<!DOCTYPE html><html><body>Too many users</body></html>", {})]
    with pytest.raises(DownloadError, match="HTML page instead of the file"):
        download(server.url("/quota"), tmp_path / "q.pt", **FAST)
    assert leftovers(tmp_path) == []


def test_sha256_prefix_is_checked(server, tmp_path):
    server.routes["/vgg16-397923af.pth"] = [(200, BODY, {})]
    download(server.url("/vgg16-397923af.pth"), tmp_path / "a.pt", sha256=sha(BODY)[:8], **FAST)
    with pytest.raises(ChecksumError, match="prefix"):
        download(server.url("/vgg16-397923af.pth"), tmp_path / "b.pt", sha256="397923af", **FAST)
    assert leftovers(tmp_path) == ["a.pt"]


def _tar_gz(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
    return buffer.getvalue()


def test_tar_gz_member_is_extracted_alone(server, tmp_path):
    archive = _tar_gz({"celebamaskhq/checkpoint.tar": b"hq weights", "bdd/checkpoint.tar": b"bdd weights",
                       "../escape.txt": b"evil"})
    server.routes["/checkpoints_decision_densenet.tar.gz"] = [(200, archive, {})]
    out = tmp_path / "ckpts"
    download(server.url("/checkpoints_decision_densenet.tar.gz"), out / "steex.pt",
             member="celebamaskhq/checkpoint.tar", sha256=sha(b"hq weights"), **FAST)
    assert (out / "steex.pt").read_bytes() == b"hq weights"
    assert leftovers(out) == ["steex.pt"]  # neither the archive nor any other member
    assert not (tmp_path / "escape.txt").exists()


def test_member_under_an_extra_top_folder_and_zip_archives(server, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("madry_ft/ImageNetModels/PytorchModels/ResNet50/l2_improved_3_ep.pt", b"robust")
        zf.writestr("madry_ft/README", b"x")
    server.routes["/madry_ft.zip"] = [(200, buffer.getvalue(), {})]
    download(server.url("/madry_ft.zip"), tmp_path / "svce.pt", member="ImageNetModels/PytorchModels/ResNet50/"
             "l2_improved_3_ep.pt", **FAST)
    assert (tmp_path / "svce.pt").read_bytes() == b"robust"


@pytest.mark.parametrize(("member", "message"), [
    ("link.pt", "is a link, not a file"),
    ("missing.pt", "has no entry missing.pt"),
    ("../escape.txt", "without '..'"),
])
def test_bad_archive_members_are_refused(server, tmp_path, member, message):
    server.routes["/a.tar.gz"] = [(200, _tar_gz({"w.pt": b"w", "../escape.txt": b"evil"}, symlink="link.pt"), {})]
    with pytest.raises(DownloadError, match=re.escape(message)):
        download(server.url("/a.tar.gz"), tmp_path / "x.pt", member=member, **FAST)
    assert leftovers(tmp_path) == []


def test_not_an_archive_is_a_clear_error(server, tmp_path):
    server.routes["/plain"] = [(200, BODY, {})]
    with pytest.raises(DownloadError, match="neither a zip nor a tar"):
        download(server.url("/plain"), tmp_path / "x.pt", member="w.pt", **FAST)
    assert leftovers(tmp_path) == []


def entry(url: str | None, **kw) -> dict:
    return {"url": url, "sha256": None, "format": "state_dict", "loader": "adm", "source": "test", **kw}


def test_trust_on_first_use_records_then_enforces(server, tmp_path):
    server.routes["/ddpm.pt"] = [(200, BODY, {})]
    spec = entry(server.url("/ddpm.pt"))
    path = fetch_checkpoint("ddpm", spec, tmp_path, **FAST)
    assert path == tmp_path / "ddpm.pt" and path.read_bytes() == BODY
    lock = dl.read_lock(tmp_path / dl.LOCK_NAME)
    assert lock["ddpm"]["sha256"] == sha(BODY) and lock["ddpm"]["source"] == server.url("/ddpm.pt")
    assert lock["ddpm"]["size"] == len(BODY)

    path.unlink()  # the same file again: accepted
    fetch_checkpoint("ddpm", spec, tmp_path, **FAST)
    path.unlink()
    server.routes["/ddpm.pt"] = [(200, BODY[::-1], {})]  # the file changed upstream: refused
    with pytest.raises(ChecksumError) as err:
        fetch_checkpoint("ddpm", spec, tmp_path, **FAST)
    assert "trust on first use" in str(err.value) and sha(BODY) in str(err.value)
    assert "delete the entry 'ddpm'" in str(err.value)
    assert leftovers(tmp_path) == [".sha256.lock.yaml.flock", dl.LOCK_NAME]
    assert dl.read_lock(tmp_path / dl.LOCK_NAME)["ddpm"]["sha256"] == sha(BODY)  # the lock is unchanged


def test_registry_sha256_wins_and_is_not_recorded(server, tmp_path):
    server.routes["/c.pt"] = [(200, BODY, {})]
    fetch_checkpoint("c", entry(server.url("/c.pt"), sha256=sha(BODY)), tmp_path, **FAST)
    assert dl.read_lock(tmp_path / dl.LOCK_NAME) == {}


def test_lock_file_merges_entries_from_concurrent_writers(tmp_path):
    lock = tmp_path / dl.LOCK_NAME
    threads = [threading.Thread(target=dl.record_sha256, args=(lock, f"n{i}", f"{i:064x}")) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(dl.read_lock(lock)) == sorted(f"n{i}" for i in range(12))
    with pytest.raises(ChecksumError, match="already records"):
        dl.record_sha256(lock, "n1", "f" * 64)


def test_a_file_placed_by_hand_is_verified_and_never_downloaded(server, tmp_path):
    server.routes["/x.pt"] = [(200, BODY, {})]
    (tmp_path / "x.pt").write_bytes(b"placed by hand")
    fetch_checkpoint("x", entry(server.url("/x.pt"), sha256=sha(b"placed by hand")), tmp_path, **FAST)
    with pytest.raises(ChecksumError, match=r"x\.pt.*expected sha256 0{64}.*replace or delete the file"):
        fetch_checkpoint("x", entry(server.url("/x.pt"), sha256="0" * 64), tmp_path, **FAST)
    assert (tmp_path / "x.pt").read_bytes() == b"placed by hand"  # never deleted
    # no digest known: the placed file's digest is recorded (trust on first use)
    fetch_checkpoint("x", entry(server.url("/x.pt")), tmp_path, **FAST)
    assert dl.read_lock(tmp_path / dl.LOCK_NAME)["x"]["sha256"] == sha(b"placed by hand")
    assert server.hits("/x.pt") == 0


def test_mirrors_are_tried_in_order_and_a_missing_url_says_where_to_put_the_file(server, tmp_path):
    server.routes["/mirror.pt"] = [(200, BODY, {})]
    fetch_checkpoint("m", entry(server.url("/gone.pt"), mirrors=[server.url("/mirror.pt")]), tmp_path, **FAST)
    assert (tmp_path / "m.pt").read_bytes() == BODY
    with pytest.raises(DownloadError, match=r"no download URL is known for checkpoint 'n'.*put it at .*n\.pkl"):
        fetch_checkpoint("n", entry(None, ext="pkl", notes="a Drive folder"), tmp_path, **FAST)
    with pytest.raises(DownloadError, match=r"any source: HTTP 404.*put it at"):
        fetch_checkpoint("o", entry(server.url("/gone.pt")), tmp_path, **FAST)


def test_google_drive_ids_go_through_gdown(monkeypatch, tmp_path):
    import gdown

    calls = []

    def fake_download(id=None, output=None, **kw):  # noqa: A002 (gdown's argument name)
        calls.append(id)
        if len(calls) == 1:  # a dropped connection first: retried
            output.write(BODY[:100])
            raise gdown.exceptions.DownloadError("response body ends before the announced bytes")
        output.write(BODY)
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    download("gdrive:17iB1aL4xctDukov-OIDuKqZdQ9YB1ZQz", tmp_path / "g.pt", sha256=sha(BODY), **FAST)
    download("https://drive.google.com/file/d/169fhxn5X2_1-5vWTepkKJZRMdr8z4b9p/view?usp=sharing",
             tmp_path / "h.pt", **FAST)
    assert calls == ["17iB1aL4xctDukov-OIDuKqZdQ9YB1ZQz"] * 2 + ["169fhxn5X2_1-5vWTepkKJZRMdr8z4b9p"]
    assert (tmp_path / "g.pt").read_bytes() == BODY
    assert leftovers(tmp_path) == ["g.pt", "h.pt"]
    assert dl.gdrive_id("https://huggingface.co/guillaumejs2403/DiME/resolve/main/ddpm-celeba.pt") is None


# --- the registry in workflow/suites/paper.yaml ---------------------------------------------------------------------


def test_paper_registry_is_valid_and_complete():
    import jsonschema

    from cfx.suite import load_suite

    suite = load_suite(ROOT / "workflow" / "suites" / "paper.yaml")
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "suite.schema.yaml").read_text())
    jsonschema.validate({k: v for k, v in suite.items() if not k.startswith("_")}, schema)
    registry = suite["checkpoints"]
    files = [dl.checkpoint_filename(name, spec) for name, spec in registry.items()]
    assert len(set(files)) == len(files)
    for name, spec in registry.items():
        for url in dl.checkpoint_sources(spec):
            assert url.startswith(("https://", "gdrive:")), (name, url)
            if url.startswith("gdrive:"):
                dl.gdrive_id(url)
        assert spec["source"], name
        assert spec["url"] or spec.get("notes"), f"{name}: an entry without url must say why in notes"
    # what the five methods and the metrics need (reference digests)
    for needed in ("dime_celeba_ddpm", "dime_celeba_classifier", "dime_celeba_oracle", "vggface2_resnet50_ft",
                   "ace_celebahq_ddpm", "steex_celebahq_classifier", "steex_celebahq_oracle", "ace_bdd_ddpm",
                   "steex_bdd_classifier", "openai_imagenet256_uncond_ddpm", "torchvision_resnet50",
                   "simsiam_resnet50_100ep", "torchvision_vgg19", "torchvision_vgg16", "fid_inception",
                   "ldm_cin256_v2", "minisd", "svce_madry_ft"):
        assert needed in registry, needed


def test_cli_lists_and_downloads(server, tmp_path):
    from click.testing import CliRunner

    from cfx.cli import main

    suite = yaml.safe_load((ROOT / "workflow" / "suites" / "paper.yaml").read_text())
    suite["checkpoints"] = {"tiny": entry(server.url("/tiny.pt"), sha256=sha(BODY))}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    server.routes["/tiny.pt"] = [(200, BODY, {})]
    runner = CliRunner()
    listed = runner.invoke(main, ["download", "--list", "--suite", str(tmp_path / "s.yaml"), "--dir",
                                  str(tmp_path / "c")])
    assert listed.exit_code == 0, listed.output
    assert "tiny" in listed.output and "missing" in listed.output
    got = runner.invoke(main, ["download", "tiny", "--suite", str(tmp_path / "s.yaml"), "--dir",
                               str(tmp_path / "c"), "--backoff", "0.01"])
    assert got.exit_code == 0, got.output
    assert (tmp_path / "c" / "tiny.pt").read_bytes() == BODY
    unknown = runner.invoke(main, ["download", "nope", "--suite", str(tmp_path / "s.yaml")])
    assert unknown.exit_code != 0 and "nope" in unknown.output and "tiny" in unknown.output
    real = runner.invoke(main, ["download", "--list"])  # the default suite is paper
    assert real.exit_code == 0 and "dime_celeba_ddpm" in real.output


@pytest.mark.slow
def test_download_rule_end_to_end(server, tmp_path):
    """snakemake builds resources/checkpoints/<file>.sha256: download_checkpoint then verify_checkpoint."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("workflow", "envs", "profiles"):
        shutil.copytree(ROOT / name, tmp_path / name)
    archive = _tar_gz({"celebamaskhq/checkpoint.tar": b"hq weights"})
    server.routes["/steex.tar.gz"] = [(500, b"", {}), (200, archive, {})]
    suite_path = tmp_path / "workflow" / "suites" / "paper.yaml"
    suite = yaml.safe_load(suite_path.read_text())
    suite["checkpoints"] = {
        "steex": entry(server.url("/steex.tar.gz"), member="celebamaskhq/checkpoint.tar", ext="tar"),
        "placed": entry(server.url("/never.pt"), sha256=sha(b"by hand")),
    }
    suite_path.write_text(yaml.safe_dump(suite))
    (tmp_path / "resources" / "checkpoints").mkdir(parents=True)
    (tmp_path / "resources" / "checkpoints" / "placed.pt").write_bytes(b"by hand")
    result = subprocess.run([sys.executable, "-m", "snakemake", "all_checkpoints", "--cores", "1", "--config",
                             "suite=paper"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CFX_DOWNLOAD_BACKOFF": "0.01"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ckpts = tmp_path / "resources" / "checkpoints"
    assert (ckpts / "steex.tar").read_bytes() == b"hq weights"
    assert (ckpts / "steex.tar.sha256").read_text().split() == [sha(b"hq weights"), "steex.tar"]
    assert (ckpts / "placed.pt.sha256").read_text().split()[0] == sha(b"by hand")
    assert server.hits("/never.pt") == 0
    assert dl.read_lock(ckpts / dl.LOCK_NAME)["steex"]["sha256"] == sha(b"hq weights")
    assert (tmp_path / "logs" / "download" / "steex.tar.log").exists()

    def snakemake(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "snakemake", *args, "--cores", "1", "--config", "suite=paper"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "CFX_DOWNLOAD_BACKOFF": "0.01"})

    # editing the registry (notes, a mirror, pinning the digest the file already has) re-runs nothing: the
    # checkpoint is neither deleted nor re-stamped (a newer stamp would re-run every job that reads it)
    stamp_time = (ckpts / "steex.tar.sha256").stat().st_mtime_ns
    suite["checkpoints"]["steex"].update(notes="edited", sha256=sha(b"hq weights"),
                                         mirrors=[server.url("/mirror.tar.gz")])
    suite["checkpoints"]["placed"]["notes"] = "edited too"
    suite_path.write_text(yaml.safe_dump(suite))
    planned = snakemake("-n", "all_checkpoints")
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "Nothing to be done" in planned.stdout + planned.stderr, planned.stdout[-3000:]
    # a pin the file does not have re-runs only the verification, which stops naming the file; the file stays
    suite["checkpoints"]["placed"]["sha256"] = "0" * 64
    suite_path.write_text(yaml.safe_dump(suite))
    refused = snakemake("all_checkpoints")
    assert refused.returncode != 0
    assert "placed.pt" in refused.stdout + refused.stderr and "replace or delete the file" in (
        refused.stdout + refused.stderr)
    assert (ckpts / "placed.pt").read_bytes() == b"by hand"
    assert (ckpts / "steex.tar.sha256").stat().st_mtime_ns == stamp_time
    # a forced download that fails (the upstream file is gone and the present one no longer matches the pin) leaves
    # the file the user had in place
    server.routes["/steex.tar.gz"] = [(404, b"", {})]
    suite["checkpoints"]["steex"]["sha256"] = "1" * 64
    suite_path.write_text(yaml.safe_dump(suite))
    forced = snakemake("--force", "resources/checkpoints/steex.tar")
    assert forced.returncode != 0
    assert (ckpts / "steex.tar").read_bytes() == b"hq weights"

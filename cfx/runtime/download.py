"""Verified downloads of published checkpoints (the paper suite's ``checkpoints:`` registry).

:func:`download` fetches one URL into one file: it streams into a temporary file next to the destination, checks
the announced Content-Length, retries network errors, HTTP 5xx/408/429 and truncated bodies with exponential
back-off (a 4xx is an immediate error), resumes with a ``Range`` request where the server allows it, verifies the
sha256, extracts exactly one archive member when asked (``.tar*``/``.zip``, without ever using a member's name as
a path), and only then moves the result into place with ``os.replace``. Nothing is left at the destination (or
next to it) when anything fails. ``gdrive:<file id>`` (and Google Drive share links) are fetched with ``gdown``;
Hugging Face ``…/resolve/…`` URLs are plain HTTP.

:func:`fetch_checkpoint` adds the registry's rules on top (``resources/checkpoints/<name>.<ext>``):

* the expected digest is the registry's ``sha256``; where the registry has none (``null``: the papers publish no
  digests), it is the one recorded in the lock file ``resources/checkpoints/sha256.lock.yaml``. **Trust on first
  use**: the first download (or the first verification of a file the user placed by hand) records the file's
  sha256 there, and every later download or verification must match it. This proves that the file has not changed
  since that first download, not that the first download was authentic. To pin a digest for everyone, copy it from
  the lock file into the suite's registry; to accept a legitimately changed upstream file, delete its lock entry.
* ``sha256_prefix`` (the leading hex digits some publishers put in file names, e.g. torchvision's
  ``vgg16-397923af.pth``) is checked whenever it is given.
* a file already at the destination (a previous download, or one an offline user put there) is never downloaded
  again: it is verified when a digest is known, recorded otherwise, and never deleted.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import http.client
import logging
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import yaml

from cfx.runtime.files import chmod_like_new_file

log = logging.getLogger(__name__)

DEFAULT_DIR = Path("resources/checkpoints")
LOCK_NAME = "sha256.lock.yaml"
DEFAULT_EXT = "pt"
CHUNK = 1 << 20
USER_AGENT = "cfx/0.1 (checkpoint download; python-urllib)"
_TRANSIENT_STATUS = (408, 425, 429)
_GDRIVE_PATTERNS = (
    re.compile(r"^https?://drive\.google\.com/file/d/([\w-]+)"),
    re.compile(r"^https?://drive\.google\.com/(?:uc|open)\?(?:.*&)?id=([\w-]+)"),
    re.compile(r"^https?://docs\.google\.com/uc\?(?:.*&)?id=([\w-]+)"),
)


class DownloadError(RuntimeError):
    """A download failed for good (after its retries, or at once for a permanent error such as HTTP 404)."""


class ChecksumError(DownloadError):
    """A file's sha256 differs from the one expected (registry, lock file or published prefix)."""


class _Transient(Exception):
    """A failure worth retrying (network error, HTTP 5xx, truncated body)."""


class Downloaded(NamedTuple):
    """What :func:`download` wrote."""

    path: Path
    sha256: str
    size: int


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(actual: str, expected: str | None, what: str, source: str = "") -> None:
    """Raise :class:`ChecksumError` unless ``actual`` equals ``expected`` (a full 64-digit digest) or starts with it
    (a prefix of at least 8 digits). ``None`` checks nothing."""
    if not expected:
        return
    expected = expected.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", expected):
        raise ValueError(f"expected sha256 for {what} is not 8 to 64 hex digits: {expected!r}")
    if actual == expected if len(expected) == 64 else actual.startswith(expected):
        return
    kind = "sha256" if len(expected) == 64 else f"sha256 prefix ({len(expected)} digits)"
    raise ChecksumError(f"sha256 mismatch for {what}" + (f" from {source}" if source else "")
                        + f": expected {kind} {expected}, got {actual}")


def gdrive_id(url: str) -> str | None:
    """The Google Drive file id of ``gdrive:<id>`` or of a Drive share link; ``None`` for any other URL."""
    if url.startswith("gdrive:"):
        file_id = url[len("gdrive:"):].strip("/")
        if not re.fullmatch(r"[\w-]{10,}", file_id):
            raise ValueError(f"'{url}' is not gdrive:<file id>")
        return file_id
    for pattern in _GDRIVE_PATTERNS:
        match = pattern.match(url)
        if match:
            return match.group(1)
    return None


def _backoff_delay(backoff: float, attempt: int) -> float:
    return backoff * 2 ** (attempt - 1)


@contextlib.contextmanager
def _temp_file(directory: Path, name: str, suffix: str) -> Iterator[Path]:
    """A temporary file ``.<name>.<random><suffix>`` in ``directory``, removed on exit unless moved away; its mode
    follows the umask like any file cfx writes (mkstemp's owner-only 0o600 would reach the destination)."""
    handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=directory)
    os.close(handle)
    try:
        chmod_like_new_file(tmp)
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool | None):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=None if enabled is None else not enabled, mininterval=1.0, leave=False)


def _http_attempt(url: str, part: Path, desc: str, timeout: float, progress: bool | None) -> None:
    """One attempt: append to ``part`` (resuming with ``Range`` when it already holds bytes and the server answers
    206, starting over otherwise) until the announced length is reached."""
    have = part.stat().st_size
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and have:  # the range starts at or beyond the end: start over
            part.write_bytes(b"")
            raise _Transient("HTTP 416 on resume") from err
        if err.code >= 500 or err.code in _TRANSIENT_STATUS:
            raise _Transient(f"HTTP {err.code} {err.reason}") from err
        hint = " (the file moved or was removed upstream: check the registry's url and source)" if err.code in (
            404, 410) else " (access denied: the file may need a login or be private)" if err.code in (401, 403) else ""
        raise DownloadError(f"HTTP {err.code} {err.reason} for {url}{hint}") from err
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as err:
        raise _Transient(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from err
    with response:
        status = getattr(response, "status", 200)
        content_range = response.headers.get("Content-Range", "")
        resumed = bool(have) and status == 206 and content_range.startswith(f"bytes {have}-")
        if status == 206 and not resumed:
            part.write_bytes(b"")
            raise _Transient(f"unexpected partial response (Content-Range '{content_range}')")
        if not resumed:
            have = 0  # the server sent the whole file: start over
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length and length.strip().isdigit() else None
        received = have
        with open(part, "r+b" if resumed else "wb") as out, \
                _progress_bar(expected, have, desc, progress) as bar:
            out.seek(have)
            out.truncate()
            while True:
                try:
                    block = response.read(CHUNK)
                except (http.client.HTTPException, TimeoutError, OSError) as err:
                    raise _Transient(f"connection lost after {received} bytes: {type(err).__name__} {err}") from err
                if not block:
                    break
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if expected is not None and received != expected:
        raise _Transient(f"truncated body: received {received} of {expected} bytes (Content-Length)")


def _gdrive_attempt(file_id: str, part: Path, timeout: float, progress: bool | None) -> None:
    """One attempt with gdown (it handles Drive's virus-scan confirmation page and checks the length). gdown writes
    into our open file: given a path, it would keep its own partial ``*.part`` files next to it on failure."""
    import gdown
    import requests

    try:
        with open(part, "wb") as out:
            gdown.download(id=file_id, output=out, quiet=progress is False, timeout=timeout)
    except gdown.exceptions.FileURLRetrievalError as err:
        raise DownloadError(f"Google Drive refused file {file_id}: {err} (a private or removed file, or Drive's "
                            f"daily download quota: retry later, or download it in a browser and place it "
                            f"by hand)") from err
    except (gdown.exceptions.DownloadError, requests.exceptions.RequestException, OSError) as err:
        raise _Transient(f"{type(err).__name__}: {err}") from err


def _fetch_raw(url: str, part: Path, desc: str, *, retries: int, backoff: float, timeout: float,
               progress: bool | None) -> None:
    """Fetch ``url`` into ``part`` with ``retries`` retries and exponential back-off; DownloadError when it fails."""
    file_id = gdrive_id(url)
    scheme = urllib.parse.urlsplit(url).scheme
    if file_id is None and scheme not in ("http", "https", "file"):
        raise DownloadError(f"cannot download '{url}': use http(s)://, file:// or gdrive:<file id>")
    failures = []
    for attempt in range(1, retries + 2):
        try:
            if file_id is not None:
                _gdrive_attempt(file_id, part, timeout, progress)
            else:
                _http_attempt(url, part, desc, timeout, progress)
            return
        except _Transient as err:
            failures.append(str(err))
            if attempt > retries:
                break
            delay = _backoff_delay(backoff, attempt)
            log.warning("download of %s failed (%s); retry %d of %d in %.1f s", url, err, attempt, retries, delay)
            time.sleep(delay)
    attempts = f"{retries + 1} attempt" + ("s" if retries else "")
    raise DownloadError(f"download of {url} failed after {attempts}: " + "; ".join(failures))


def _member_type(info: tarfile.TarInfo | zipfile.ZipInfo) -> str:
    if isinstance(info, zipfile.ZipInfo):
        if info.is_dir():
            return "a directory"
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            return "a symbolic link"
        return "file"
    return "file" if info.isfile() else "a directory" if info.isdir() else "a link" if (
        info.issym() or info.islnk()) else "not a regular file"


def _find_member(names: list[str], member: str, archive_name: str) -> str:
    """The archive entry named ``member``: an exact match (ignoring a leading ``./``), else the only entry that ends
    with ``/member`` (an archive with one more top-level folder)."""
    norm = {posixpath.normpath(n.lstrip("/")).removeprefix("./"): n for n in names}
    if member in norm:
        return norm[member]
    candidates = [n for key, n in norm.items() if key.endswith("/" + member)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise DownloadError(f"archive {archive_name} has several entries ending in {member}: {candidates[:5]}")
    files = sorted(norm)[:20]
    raise DownloadError(f"archive {archive_name} has no entry {member}; its entries include {files}")


def extract_member(archive: str | Path, member: str, out: BinaryIO) -> None:
    """Copy the regular file ``member`` of a zip or (compressed) tar ``archive`` into ``out``.

    Only the member's bytes are read: its name never becomes a path, so an archive cannot write elsewhere (no path
    traversal); links, directories and special files are refused, as are member names that are absolute or
    contain ``..``."""
    archive = Path(archive)
    parts = member.split("/")
    if not member or member.startswith("/") or ".." in parts or "\\" in member:
        raise DownloadError(f"archive member name '{member}' must be a relative path without '..'")
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            info = zf.getinfo(_find_member(zf.namelist(), member, archive.name))
            if (kind := _member_type(info)) != "file":
                raise DownloadError(f"archive member {info.filename} of {archive.name} is {kind}, not a file")
            with zf.open(info) as src:
                shutil.copyfileobj(src, out, CHUNK)
        return
    try:
        tf = tarfile.open(archive, "r:*")
    except tarfile.TarError as err:
        raise DownloadError(f"{archive.name} is neither a zip nor a tar archive (cannot extract {member}): "
                            f"{err}") from err
    with tf:
        info = tf.getmember(_find_member(tf.getnames(), member, archive.name))
        if (kind := _member_type(info)) != "file":
            raise DownloadError(f"archive member {info.name} of {archive.name} is {kind}, not a file")
        src = tf.extractfile(info)
        if src is None:
            raise DownloadError(f"archive member {info.name} of {archive.name} cannot be read")
        with src:
            shutil.copyfileobj(src, out, CHUNK)


def _is_html(path: Path) -> bool:
    """A checkpoint is never a web page: an HTML body is a login, quota or error page served with status 200 (Google
    Drive does this) and must not be taken for the file, nor recorded as its digest."""
    with open(path, "rb") as handle:
        head = handle.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def download(url: str, dest: str | Path, *, sha256: str | None = None, retries: int = 4, backoff: float = 2.0,
             member: str | None = None, timeout: float = 60.0, progress: bool | None = None) -> Downloaded:
    """Download ``url`` (http(s), file, ``gdrive:<id>`` or a Drive share link) to ``dest`` and return its path,
    sha256 and size.

    ``retries`` retries after the first attempt, waiting ``backoff``, 2·``backoff``, 4·``backoff``… seconds, for
    network errors, HTTP 5xx/408/429 and bodies shorter than their Content-Length; other HTTP errors fail at once.
    ``member``: ``url`` is a zip/tar archive and ``dest`` receives only that member. ``sha256``: the digest of the
    file written to ``dest`` (of the member, for an archive), or a prefix of it of at least 8 hex digits; a mismatch
    raises :class:`ChecksumError` naming both digests and the URL. The file appears at ``dest`` atomically and only
    once verified; on any failure nothing is left there or next to it. An existing ``dest`` is replaced.
    ``progress``: a tqdm bar (``None``: only on a terminal)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _temp_file(dest.parent, dest.name, ".part") as part:
        _fetch_raw(url, part, dest.name, retries=retries, backoff=backoff, timeout=timeout, progress=progress)
        if member is not None:
            with _temp_file(dest.parent, dest.name, ".member") as extracted:
                with open(extracted, "wb") as out:
                    extract_member(part, member, out)
                os.replace(extracted, part)
        if _is_html(part):
            raise DownloadError(f"{url} returned an HTML page instead of the file (a login, quota or error page: "
                                f"open the URL in a browser to see it)")
        digest = sha256_file(part)
        check_sha256(digest, sha256, dest.name + (f" (archive member {member})" if member else ""), url)
        size = part.stat().st_size
        os.replace(part, dest)
    log.info("downloaded %s -> %s (%d bytes, sha256 %s)", url, dest, size, digest)
    return Downloaded(dest, digest, size)


# --- the registry: file names, the trust-on-first-use lock file, verification --------------------------------------


def checkpoint_filename(name: str, entry: Mapping[str, Any]) -> str:
    """The file of registry checkpoint ``name`` under resources/checkpoints: ``<name>.<ext>`` (ext default pt)."""
    return f"{name}.{entry.get('ext') or DEFAULT_EXT}"


def checkpoint_sources(entry: Mapping[str, Any]) -> list[str]:
    """The entry's URL and mirrors, in the order they are tried."""
    return [u for u in [entry.get("url"), *(entry.get("mirrors") or [])] if u]


def default_lock_path(directory: str | Path = DEFAULT_DIR) -> Path:
    return Path(directory) / LOCK_NAME


def read_lock(lock_path: str | Path) -> dict[str, dict[str, Any]]:
    """The lock file's entries ``{name: {sha256, size, source, recorded}}`` (empty when there is no file)."""
    lock_path = Path(lock_path)
    if not lock_path.is_file():
        return {}
    with lock_path.open() as handle:
        data = yaml.safe_load(handle) or {}
    entries = data.get("checkpoints", data) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f"{lock_path} is not a sha256 lock file (expected a mapping 'checkpoints: {{name: ...}}')")
    return entries


_LOCK_HEADER = """\
# sha256 of checkpoints whose digest the suite registry does not give, recorded at their first download (or the
# first verification of a file placed by hand) and enforced afterwards: trust on first use. Written by cfx
# (cfx/runtime/download.py). To pin a digest for everyone, copy it into the registry (sha256:); to accept a file
# that changed upstream on purpose, delete its entry here.
"""


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path.parent / f".{lock_path.name}.flock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record_sha256(lock_path: str | Path, name: str, sha256: str, **info: Any) -> None:
    """Add ``name: {sha256, **info, recorded}`` to the lock file: read, merge and rewrite atomically under an
    exclusive ``flock``, so concurrent downloads never lose each other's entries. Recording a different digest for
    a name already there raises :class:`ChecksumError`."""
    lock_path = Path(lock_path)
    with _locked(lock_path):
        entries = read_lock(lock_path)
        old = entries.get(name)
        if old and old.get("sha256") == sha256:
            return
        if old:
            raise ChecksumError(f"{lock_path} already records sha256 {old.get('sha256')} for checkpoint '{name}', "
                                f"not {sha256}")
        entries[name] = {"sha256": sha256, **info,
                         "recorded": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        text = _LOCK_HEADER + yaml.safe_dump({"checkpoints": dict(sorted(entries.items()))}, sort_keys=False)
        with _temp_file(lock_path.parent, lock_path.name, ".tmp") as tmp:
            tmp.write_text(text)
            os.replace(tmp, lock_path)


def expected_sha256(name: str, entry: Mapping[str, Any], lock_path: str | Path) -> tuple[str | None, str]:
    """The full digest a checkpoint must have and where it comes from: ``registry``, ``lock`` (trust on first use)
    or ``None`` with ``unknown``."""
    if entry.get("sha256"):
        return str(entry["sha256"]).lower(), "registry"
    recorded = read_lock(lock_path).get(name) or {}
    if recorded.get("sha256"):
        return str(recorded["sha256"]).lower(), "lock"
    return None, "unknown"


def _mismatch_hint(name: str, origin: str, lock_path: Path) -> str:
    if origin == "lock":
        return (f"; the digest was recorded at the first download in {lock_path} (trust on first use): if the "
                f"upstream file changed on purpose, delete the entry '{name}' there and rerun")
    return f"; the expected digest is the registry's (sha256 of checkpoint '{name}' in the suite file)"


def verify_checkpoint(path: str | Path, name: str, entry: Mapping[str, Any],
                      lock_path: str | Path | None = None) -> str:
    """Verify an existing checkpoint file (downloaded, or placed by hand) and return its sha256.

    Checked against the registry's ``sha256`` or the lock file's, and ``sha256_prefix``; with no digest known the
    file's digest is recorded in the lock file (trust on first use). A mismatch raises :class:`ChecksumError`
    naming the file and both digests; the file is left untouched."""
    path = Path(path)
    lock_path = Path(lock_path) if lock_path else default_lock_path(path.parent)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if _is_html(path):
        raise ChecksumError(f"{path} (checkpoint '{name}') is an HTML page, not a checkpoint (a saved login, quota or "
                            f"error page?); replace or delete the file")
    digest = sha256_file(path)
    expected, origin = expected_sha256(name, entry, lock_path)
    try:
        check_sha256(digest, entry.get("sha256_prefix"), f"{path} (checkpoint '{name}')", "its published file name")
        check_sha256(digest, expected, f"{path} (checkpoint '{name}')")
    except ChecksumError as err:
        raise ChecksumError(f"{err}{_mismatch_hint(name, origin, lock_path)}; replace or delete the file") from err
    if expected is None:
        record_sha256(lock_path, name, digest, size=path.stat().st_size, source=f"local file {path.name}")
        log.warning("checkpoint '%s': no sha256 known; recorded %s of the local file %s in %s (trust on first use)",
                    name, digest, path, lock_path)
    return digest


def fetch_checkpoint(name: str, entry: Mapping[str, Any], directory: str | Path = DEFAULT_DIR, *,
                     lock_path: str | Path | None = None, retries: int = 4, backoff: float = 2.0,
                     timeout: float = 60.0, progress: bool | None = None) -> Path:
    """Make registry checkpoint ``name`` available as ``directory/<name>.<ext>`` and return that path.

    A file already there is verified (:func:`verify_checkpoint`) and never downloaded again. Otherwise the entry's
    ``url`` and then its ``mirrors`` are tried (a source that fails moves on to the next; a digest mismatch stops at
    once), the download is verified against the registry's or the lock file's digest and ``sha256_prefix``, and
    with no digest known the new file's sha256 is recorded in the lock file (trust on first use)."""
    directory = Path(directory)
    dest = directory / checkpoint_filename(name, entry)
    lock_path = Path(lock_path) if lock_path else default_lock_path(directory)
    if dest.exists():
        log.info("checkpoint '%s' is already at %s: verifying it, not downloading", name, dest)
        verify_checkpoint(dest, name, entry, lock_path)
        return dest
    sources = checkpoint_sources(entry)
    if not sources:
        notes = " ".join(str(entry.get("notes") or "").split())
        raise DownloadError(f"no download URL is known for checkpoint '{name}' (source: {entry.get('source', 'n/a')}"
                            + (f"; {notes}" if notes else "") + f"): get the file by hand and put it at {dest}")
    expected, origin = expected_sha256(name, entry, lock_path)
    failures = []
    for url in sources:
        try:
            result = download(url, dest, sha256=expected or entry.get("sha256_prefix"), retries=retries,
                              backoff=backoff, member=entry.get("member"), timeout=timeout, progress=progress)
        except ChecksumError as err:
            raise ChecksumError(f"{err}{_mismatch_hint(name, origin, lock_path)}; nothing was written to "
                                f"{dest}") from err
        except DownloadError as err:
            failures.append(str(err))
            log.warning("checkpoint '%s': %s", name, err)
            continue
        try:
            if expected:
                check_sha256(result.sha256, entry.get("sha256_prefix"), dest.name, url)
            else:
                record_sha256(lock_path, name, result.sha256, size=result.size, source=url)
                log.warning("checkpoint '%s': no sha256 known; recorded %s in %s (trust on first use: later "
                            "downloads must match it)", name, result.sha256, lock_path)
        except ChecksumError:
            dest.unlink(missing_ok=True)
            raise
        return dest
    raise DownloadError(f"checkpoint '{name}' could not be downloaded from any source: " + " | ".join(failures)
                        + f". Offline, or behind a firewall: get the file by hand and put it at {dest}")


def registry_status(registry: Mapping[str, Mapping[str, Any]], directory: str | Path = DEFAULT_DIR,
                    lock_path: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per registry checkpoint: name, file, status (present / missing / place by hand), where its digest
    comes from (registry, lock, prefix, unknown) and its first source. Nothing is hashed or downloaded."""
    directory = Path(directory)
    lock = read_lock(Path(lock_path) if lock_path else default_lock_path(directory))
    rows = []
    for name, entry in registry.items():
        path = directory / checkpoint_filename(name, entry)
        sources = checkpoint_sources(entry)
        digest = "registry" if entry.get("sha256") else "lock" if (lock.get(name) or {}).get("sha256") else (
            "prefix" if entry.get("sha256_prefix") else "unknown")
        status = "present" if path.is_file() else "missing" if sources else "place by hand"
        rows.append({"name": name, "file": str(path), "status": status, "sha256": digest,
                     "source": sources[0] if sources else "-"})
    return rows


def verify_pinned_files(folder: str | Path, files: Mapping[str, tuple[str, str]], *, what: str, version: str,
                        fetch_hint: str) -> Path:
    """Check that ``folder`` holds every file of ``files`` (name → (url, sha256)), a versioned resource pinned by
    digest (SVCE's WordNet files, LDCE's target lists); a missing file names its URL and ``fetch_hint``, a wrong
    digest the expected one and ``version``."""
    folder = Path(folder)
    for name, (url, sha) in files.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{what} {path} is missing: download {url} there (or call {fetch_hint})")
        actual = sha256_file(path)
        if actual != sha:
            raise ValueError(f"{path} has sha256 {actual}, expected {sha} ({version}): re-download {url}")
    return folder


def fetch_pinned_files(folder: str | Path, files: Mapping[str, tuple[str, str]], timeout: float = 60.0) -> None:
    """Download the files of ``files`` that ``folder`` lacks or holds with another digest (:func:`download`:
    atomic, sha256-checked, retried)."""
    for name, (url, sha) in files.items():
        path = Path(folder) / name
        if not (path.is_file() and sha256_file(path) == sha):
            download(url, path, sha256=sha, timeout=timeout)

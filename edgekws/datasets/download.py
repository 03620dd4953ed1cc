"""Fetch public datasets into the cache: resumable HTTP downloads, checksums, atomic unpacking.

:func:`fetch_dataset` downloads a dataset's official archive into ``<cache>/downloads/``, checks it against the
checksum its publisher gives (or against its contents where none is published), unpacks it into a temporary folder
beside ``<cache>/datasets/<name>`` and renames that folder into place only once the whole dataset is there, so an
interrupted or failed run never leaves a half dataset behind. A cut connection resumes from the bytes already on
disk (HTTP ``Range``), within a run (a few retries) and across runs (the ``.part`` file is kept); a file whose
checksum does not match is deleted and the error says how to fetch it again or where to put the files by hand.

Progress goes to a callback as event dicts (the library never prints):
``{"event": "download", "name", "done", "total"}`` (bytes; ``total`` may be ``None``),
``{"event": "verify", "name", "done", "total"}`` and ``{"event": "unpack", "name", "done", "total"}``.

Sources (see :data:`SOURCES`) and their licences:

- ``gsc``: Speech Commands v0.02, CC BY 4.0, sha256 as published with TensorFlow Datasets and torchaudio.
- ``esc50`` (and ``esc10``, its CC BY subset): ESC-50, CC BY-NC 3.0 (ESC-10 clips: CC BY); the publisher offers a
  GitHub archive of the repository and no checksum, so the unpacked folder is checked against its metadata
  (every listed clip present) and the archive's sha256 is recorded.
- ``us8k``: UrbanSound8K v1.0 on Zenodo, CC BY-NC (non-commercial use only); Zenodo publishes an MD5, which is
  checked, and the sha256 is recorded.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import os
import shutil
import socket
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from edgekws.fileio import atomic_write_json, fsync_dir

__all__ = [
    "SOURCES",
    "DatasetSource",
    "DownloadError",
    "dataset_dir",
    "describe",
    "download_file",
    "fetch_dataset",
    "find_downloaded",
    "unpack_archive",
]

Progress = Callable[[dict], None]
MARKER = ".edgekws-dataset.json"


class DownloadError(RuntimeError):
    """A download or unpack failed; the message says whether to run again (resume) or where to put files by hand."""


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's archive lives and how to check it.

    ``checksum`` is ``"sha256:<hex>"`` or ``"md5:<hex>"`` as the publisher gives it, or ``None`` when there is none
    (then ``check`` decides). ``required`` are paths that must exist in the unpacked dataset root; ``check`` names a
    contents check (``"esc50"``: every clip in ``meta/esc50.csv`` exists).
    """

    name: str
    title: str
    url: str
    filename: str
    licence: str
    homepage: str
    required: tuple[str, ...]
    checksum: str | None = None
    size: int | None = None
    check: str | None = None
    by_hand: str = ""

    def with_url(self, url: str, checksum: str | None = None, size: int | None = None) -> DatasetSource:
        """The same dataset from another address (a mirror, or a test server)."""
        return replace(self, url=url, checksum=checksum, size=size)


SOURCES: dict[str, DatasetSource] = {
    "gsc": DatasetSource(
        name="gsc",
        title="Speech Commands v0.02",
        url="https://storage.googleapis.com/download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
        filename="speech_commands_v0.02.tar.gz",
        checksum="sha256:af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
        size=2_428_923_189,
        licence="CC BY 4.0",
        homepage="https://arxiv.org/abs/1804.03209",
        required=("yes", "no", "_background_noise_", "validation_list.txt", "testing_list.txt"),
        by_hand="unpack speech_commands_v0.02.tar.gz into a folder (it holds yes/, no/, ..., "
                "_background_noise_/) and pass that folder with --data-dir",
    ),
    "esc50": DatasetSource(
        name="esc50",
        title="ESC-50",
        url="https://github.com/karolpiczak/ESC-50/archive/master.zip",
        filename="ESC-50-master.zip",
        licence="CC BY-NC 3.0 (non-commercial use only); the ESC-10 clips: CC BY",
        homepage="https://github.com/karolpiczak/ESC-50",
        required=("meta/esc50.csv", "audio"),
        check="esc50",
        by_hand="unzip the ESC-50 archive and pass the folder holding meta/esc50.csv and audio/ with --data-dir",
    ),
    "us8k": DatasetSource(
        name="us8k",
        title="UrbanSound8K v1.0",
        url="https://zenodo.org/records/1203745/files/UrbanSound8K.tar.gz",
        filename="UrbanSound8K.tar.gz",
        checksum="md5:9aa69802bbf37fb986f71ec1483a196e",
        licence="CC BY-NC (non-commercial use only; see the dataset's README)",
        homepage="https://urbansounddataset.weebly.com/urbansound8k.html",
        required=("metadata/UrbanSound8K.csv", "audio/fold1"),
        by_hand="unpack UrbanSound8K.tar.gz and pass the folder holding metadata/ and audio/ with --data-dir",
    ),
}
ALIASES = {"esc10": "esc50"}  # the ESC-10 subset ships inside the ESC-50 archive


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    from edgekws.datasets.cache import default_cache_dir

    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def dataset_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`fetch_dataset` puts dataset ``name`` (``<cache>/datasets/<name>``)."""
    return _cache_root(cache_dir) / "datasets" / ALIASES.get(name, name)


def find_downloaded(name: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The root of a completely fetched dataset in the cache, or ``None``."""
    d = dataset_dir(name, cache_dir)
    return d if (d / MARKER).is_file() else None


# Downloading -----------------------------------------------------------------------------------------------------


def _parse_checksum(checksum: str | None) -> tuple[str, str] | None:
    if checksum is None:
        return None
    algo, sep, hexdigest = checksum.partition(":")
    if not sep or algo not in ("sha256", "md5") or not hexdigest:
        raise ValueError(f"checksum must be 'sha256:<hex>' or 'md5:<hex>', got {checksum!r}")
    return algo, hexdigest.lower()


def _digests(path: Path, progress: Progress | None, name: str) -> dict[str, str]:
    """sha256 and md5 of a file in one pass."""
    h256, hmd5 = hashlib.sha256(), hashlib.md5()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h256.update(block)
            hmd5.update(block)
            done += len(block)
            if progress:
                progress({"event": "verify", "name": name, "done": done, "total": total})
    return {"sha256": h256.hexdigest(), "md5": hmd5.hexdigest()}


_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError)


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200" -> 100
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _fetch_once(url: str, part: Path, *, timeout: float, chunk: int, name: str, progress: Progress | None,
                expected_size: int | None) -> int | None:
    """One HTTP request appending to ``part`` from its current size. Returns the total size if known.

    Raises a transient error when the connection breaks (the bytes received so far stay in ``part``).
    """
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "edgekws", "Accept-Encoding": "identity"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part is (or claims to be) complete
            return have
        if exc.code >= 500 or exc.code == 429:
            raise ConnectionError(f"server answered {exc.code} {exc.reason}") from exc
        raise DownloadError(f"{url}: server answered {exc.code} {exc.reason}") from exc
    with resp:
        status = getattr(resp, "status", 200)
        length = resp.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if have and status == 206 and _content_range_start(resp.headers.get("Content-Range")) == have:
            mode, total = "ab", (have + length if length is not None else expected_size)
        else:  # the server sent the whole file (it ignores Range, or this is a fresh start)
            mode, total, have = "wb", length if length is not None else expected_size, 0
        done = have
        with open(part, mode) as fh:
            if progress:
                progress({"event": "download", "name": name, "done": done, "total": total})
            while True:
                block = resp.read(chunk)
                if not block:
                    break
                fh.write(block)
                done += len(block)
                if progress:
                    progress({"event": "download", "name": name, "done": done, "total": total})
            fh.flush()
            os.fsync(fh.fileno())
        if length is not None and done - have < length:
            raise ConnectionError(f"connection closed after {done} of {total} bytes")
        return total


def download_file(url: str, dest: str | os.PathLike, *, checksum: str | None = None, size: int | None = None,
                  progress: Progress | None = None, retries: int = 3, backoff_s: float = 2.0,
                  timeout: float = 60.0, chunk: int = 1 << 20, name: str = "") -> dict[str, str]:
    """Download ``url`` to ``dest``, resuming from ``dest + ".part"`` when it exists.

    A broken connection is retried ``retries`` times, each retry asking only for the missing bytes (HTTP Range;
    a server that ignores Range sends everything again and the part is rewritten). The finished file is checked
    against ``checksum`` (``"sha256:<hex>"`` / ``"md5:<hex>"``) before it is renamed to ``dest``.

    Returns ``{"sha256", "md5"}`` of the file. Raises :class:`DownloadError`: the connection kept failing (the part
    stays, so a new call resumes), or the checksum or size is wrong (the part is deleted).
    """
    dest = Path(dest)
    want = _parse_checksum(checksum)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    name = name or dest.name
    attempt = 0
    while True:
        try:
            total = _fetch_once(url, part, timeout=timeout, chunk=chunk, name=name, progress=progress,
                                expected_size=size)
            break
        except _TRANSIENT as exc:
            attempt += 1
            have = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                raise DownloadError(
                    f"download of {url} failed after {attempt} attempts ({exc}); {have} bytes are kept in {part}: "
                    "run the same command again to resume from there") from exc
            if backoff_s:
                time.sleep(backoff_s * attempt)
    got = part.stat().st_size
    if (size is not None and got != size) or (total is not None and got != total):
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: received {got} bytes, expected {size if size is not None else total}; the "
                            "partial file was removed, run the command again to download it afresh")
    digests = _digests(part, progress, name)
    if want is not None and digests[want[0]] != want[1]:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: {want[0]} of the download is {digests[want[0]]}, expected {want[1]}; the file "
                            "was removed. Run the command again to download it afresh")
    os.replace(part, dest)
    return digests


# Unpacking -------------------------------------------------------------------------------------------------------


def _safe_relpath(member: str) -> PurePosixPath | None:
    """A member name as a relative path inside the target, or None for the archive's own root entry."""
    p = PurePosixPath(member.replace("\\", "/"))
    parts = [s for s in p.parts if s not in ("", ".")]
    if p.is_absolute() or ".." in parts or (parts and ":" in parts[0]):
        raise DownloadError(f"archive member {member!r} points outside the dataset folder; refusing to unpack it")
    return PurePosixPath(*parts) if parts else None


def unpack_archive(archive: str | os.PathLike, target: str | os.PathLike, *, progress: Progress | None = None,
                   name: str = "") -> int:
    """Unpack a ``.tar``/``.tar.gz``/``.zip`` into ``target`` (regular files and folders only). Returns the file count.

    Links, devices and paths leaving ``target`` are refused (:class:`DownloadError`).
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    total = archive.stat().st_size
    n = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for i, info in enumerate(infos):
                rel = _safe_relpath(info.filename)
                mode = info.external_attr >> 16
                if rel is None:
                    continue
                if stat.S_ISLNK(mode):
                    raise DownloadError(f"archive member {info.filename!r} is a link; refusing to unpack it")
                out = target / rel
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                else:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    n += 1
                if progress and (i % 64 == 0 or i == len(infos) - 1):
                    progress({"event": "unpack", "name": name, "done": i + 1, "total": len(infos)})
        return n
    try:
        with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tf:
            for member in tf:
                rel = _safe_relpath(member.name)
                if rel is None:
                    continue
                out = target / rel
                if member.isdir():
                    out.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    out.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(member)
                    assert src is not None
                    with open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    n += 1
                else:
                    raise DownloadError(f"archive member {member.name!r} is a link or device; refusing to unpack it")
                if progress and n % 64 == 0:
                    progress({"event": "unpack", "name": name, "done": raw.tell(), "total": total})
            if progress:
                progress({"event": "unpack", "name": name, "done": total, "total": total})
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, DownloadError):
            raise
        raise DownloadError(f"{archive} is not a readable archive ({exc})") from exc
    return n


def _dataset_root(folder: Path, required: tuple[str, ...]) -> Path | None:
    """``folder`` or its only sub-folder (archives often wrap everything in one), whichever holds ``required``."""
    if all((folder / r).exists() for r in required):
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir()]
    if len(subs) == 1 and all((subs[0] / r).exists() for r in required):
        return subs[0]
    return None


def _check_contents(source: DatasetSource, root: Path) -> None:
    if source.check == "esc50":
        meta = root / "meta" / "esc50.csv"
        with open(meta, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            raise DownloadError(f"{meta} lists no clips")
        missing = [r.get("filename", "") for r in rows if not (root / "audio" / r.get("filename", "")).is_file()]
        if missing:
            raise DownloadError(f"the ESC-50 archive lacks {len(missing)} of the {len(rows)} clips its metadata lists "
                                f"(first: {missing[0]})")


def fetch_dataset(name: str, cache_dir: str | os.PathLike | None = None, *, progress: Progress | None = None,
                  source: DatasetSource | None = None, keep_archive: bool = False, retries: int = 3,
                  backoff_s: float = 2.0, timeout: float = 60.0) -> Path:
    """Make dataset ``name`` (``gsc``, ``esc50``/``esc10``, ``us8k``) available in the cache; return its root.

    Nothing is downloaded when the cache already holds it. An archive placed by hand at
    ``<cache>/downloads/<filename>`` is checked and used instead of downloading. With ``$EDGEKWS_OFFLINE`` set
    (not ``0``), a dataset that would have to be downloaded is refused with the by-hand instructions. ``source`` overrides the
    address (a mirror). The archive is deleted after a successful unpack unless ``keep_archive``.
    """
    key = ALIASES.get(name, name)
    if source is None:
        if key not in SOURCES:
            raise ValueError(f"no download for dataset {name!r}; downloadable: {', '.join(sorted(SOURCES))}")
        source = SOURCES[key]
    final = dataset_dir(key, cache_dir)
    if (final / MARKER).is_file():
        return final
    downloads = _cache_root(cache_dir) / "downloads"
    archive = downloads / source.filename
    by_hand = (f"To set it up by hand: download {source.url}, {source.by_hand}; or put the archive at {archive} and "
               "run the command again")
    try:
        if archive.is_file():  # placed by hand, or kept from an earlier run
            digests = _digests(archive, progress, source.filename)
            want = _parse_checksum(source.checksum)
            if want is not None and digests[want[0]] != want[1]:
                archive.unlink()
                raise DownloadError(f"{archive}: {want[0]} is {digests[want[0]]}, expected {want[1]}; the file was "
                                    "removed. Run the command again to download it afresh")
        elif os.environ.get("EDGEKWS_OFFLINE", "").strip() not in ("", "0"):
            raise DownloadError(f"{source.filename} is not in the cache and downloads are switched off "
                                "(EDGEKWS_OFFLINE is set)")
        else:
            digests = download_file(source.url, archive, checksum=source.checksum, size=source.size,
                                    progress=progress, retries=retries, backoff_s=backoff_s, timeout=timeout,
                                    name=source.filename)
    except DownloadError as exc:
        raise DownloadError(f"{source.title}: {exc}. {by_hand}") from exc

    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.unpacking-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        n_files = unpack_archive(archive, staging, progress=progress, name=source.filename)
        root = _dataset_root(staging, source.required)
        if root is None:
            raise DownloadError(f"the archive does not hold {', '.join(source.required)}")
        _check_contents(source, root)
        atomic_write_json(root / MARKER, {
            "name": key, "title": source.title, "url": source.url, "licence": source.licence,
            "homepage": source.homepage, "archive": source.filename, "files": n_files, **digests,
        })
        if final.exists():  # an earlier, unfinished copy (no marker): replaced as a whole
            shutil.rmtree(final)
        os.replace(root, final)
        fsync_dir(final.parent)
    except DownloadError as exc:
        if source.checksum is None:  # unverifiable archive that does not unpack: fetch it again next time
            archive.unlink(missing_ok=True)
        raise DownloadError(f"{source.title}: {exc}; nothing was installed. {by_hand}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return final


def describe(name: str) -> dict[str, Any]:
    """Title, address, licence and checksum of a downloadable dataset (for the CLI and docs)."""
    s = SOURCES[ALIASES.get(name, name)]
    return {"name": name, "title": s.title, "url": s.url, "licence": s.licence, "checksum": s.checksum,
            "size": s.size, "homepage": s.homepage}

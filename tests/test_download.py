"""Dataset downloads against a local HTTP server (127.0.0.1, Range support written here): success, a cut
connection that resumes, a wrong checksum, unsafe archives; ESC-10 from the ESC-50 layout. No internet."""

from __future__ import annotations

import csv
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import tone, write_wav

from edgekws.datasets import load_dataset
from edgekws.datasets.download import (
    MARKER,
    SOURCES,
    DownloadError,
    dataset_dir,
    download_file,
    fetch_dataset,
    find_downloaded,
    unpack_archive,
)
from edgekws.datasets.esc50 import ESC10_CATEGORIES, load_esc10, load_esc50


class _Server:
    """Serves ``files`` (path -> bytes). ``cut[path] = n``: the next response for that path stops after n bytes of
    body (the connection closes early) once; ``ranges`` toggles Range support. Records every request's Range."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ranges = True
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and server.ranges:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                n = server.cut.pop(self.path, None)
                if n is not None:
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("EDGEKWS_OFFLINE")  # these tests download, from 127.0.0.1 only
    s = _Server()
    yield s
    s.close()


def _gsc_archive(words=("yes", "no"), speakers=3) -> bytes:
    """A small Speech Commands style .tar.gz (no top folder, members named ./word/..., like the real one)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        for w, word in enumerate(words):
            for s in range(speakers):
                wav = io.BytesIO()
                import soundfile as sf

                sf.write(wav, tone(300 + 100 * w + 7 * s), 16000, format="WAV", subtype="PCM_16")
                add(f"./{word}/spk{s:02d}_nohash_0.wav", wav.getvalue())
        add("./_background_noise_/white.wav", _wav_bytes(np.random.default_rng(0).normal(0, 0.1, 32000)))
        add("./validation_list.txt", f"{words[0]}/spk01_nohash_0.wav\n".encode())
        add("./testing_list.txt", f"{words[0]}/spk02_nohash_0.wav\n".encode())
    return buf.getvalue()


def _wav_bytes(y) -> bytes:
    import soundfile as sf

    wav = io.BytesIO()
    sf.write(wav, np.asarray(y, np.float32), 16000, format="WAV", subtype="PCM_16")
    return wav.getvalue()


def _source(server: _Server, data: bytes, checksum: str | None = "auto", name: str = "gsc"):
    server.files["/archive.tar.gz"] = data
    if checksum == "auto":
        checksum = "sha256:" + hashlib.sha256(data).hexdigest()
    return SOURCES[name].with_url(server.url("/archive.tar.gz"), checksum=checksum, size=len(data))


def test_fetch_dataset_downloads_checks_and_unpacks(server, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKWS_CACHE", str(tmp_path))
    data = _gsc_archive()
    src = _source(server, data)
    events = []
    root = fetch_dataset("gsc", tmp_path, progress=events.append, source=src, backoff_s=0)
    assert root == dataset_dir("gsc", tmp_path) and (root / MARKER).is_file()
    assert find_downloaded("gsc", tmp_path) == root
    assert sorted(p.name for p in (root / "yes").iterdir()) == [f"spk{s:02d}_nohash_0.wav" for s in range(3)]
    kinds = {e["event"] for e in events}
    assert {"download", "verify", "unpack"} <= kinds
    last = [e for e in events if e["event"] == "download"][-1]
    assert last["done"] == last["total"] == len(data)
    assert not any((tmp_path / "downloads").iterdir())  # the archive is removed once unpacked
    assert not [p for p in (tmp_path / "datasets").iterdir() if p.name.startswith(".")]  # no staging left
    # the loader opens the cached copy without --data-dir, with the archive's own split lists
    ds = load_dataset("gsc", keywords=("yes", "no"))
    assert len(ds) == 6 and set(ds.folds.tolist()) == {"train", "val", "test"}
    # a second call finds it and sends no request
    n = len(server.requests)
    assert fetch_dataset("gsc", tmp_path, source=src) == root and len(server.requests) == n


def test_cut_connection_resumes_with_range(server, tmp_path):
    data = _gsc_archive()
    src = _source(server, data)
    server.cut["/archive.tar.gz"] = len(data) // 3
    root = fetch_dataset("gsc", tmp_path, source=src, backoff_s=0)
    assert (root / "no" / "spk00_nohash_0.wav").is_file()
    assert server.requests[0][1] is None
    assert server.requests[1][1] == f"bytes={len(data) // 3}-"  # asked only for the rest


def test_resume_across_calls_after_giving_up(server, tmp_path):
    data = _gsc_archive()
    dest = tmp_path / "dl" / "a.tar.gz"
    url = server.url("/a.tar.gz")
    server.files["/a.tar.gz"] = data
    server.cut["/a.tar.gz"] = 1000
    checksum = "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download_file(url, dest, checksum=checksum, retries=0, backoff_s=0)
    part = dest.with_name(dest.name + ".part")
    assert part.stat().st_size == 1000 and not dest.exists()
    digests = download_file(url, dest, checksum=checksum, retries=0, backoff_s=0)
    assert dest.read_bytes() == data and digests["sha256"] == checksum[7:] and not part.exists()
    assert server.requests[-1][1] == "bytes=1000-"


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    data = _gsc_archive()
    server.files["/a.tar.gz"] = data
    server.ranges = False
    dest = tmp_path / "a.tar.gz"
    dest.with_name("a.tar.gz.part").write_bytes(b"garbage from an older attempt")
    download_file(server.url("/a.tar.gz"), dest, checksum="md5:" + hashlib.md5(data).hexdigest(), backoff_s=0)
    assert dest.read_bytes() == data


def test_wrong_checksum_leaves_nothing_and_says_what_to_do(server, tmp_path):
    data = _gsc_archive()
    src = _source(server, data, checksum="sha256:" + "0" * 64)
    with pytest.raises(DownloadError) as err:
        fetch_dataset("gsc", tmp_path, source=src, backoff_s=0)
    msg = str(err.value)
    assert "expected " + "0" * 64 in msg and "run the command again" in msg.lower()
    assert "--data-dir" in msg and str(tmp_path / "downloads" / "speech_commands_v0.02.tar.gz") in msg
    assert find_downloaded("gsc", tmp_path) is None
    assert not (tmp_path / "datasets").exists() or not any((tmp_path / "datasets").iterdir())
    assert not any((tmp_path / "downloads").iterdir())  # the bad file is gone


def test_archive_placed_by_hand_is_used(server, tmp_path):
    data = _gsc_archive()
    src = _source(server, data)
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / src.filename).write_bytes(data)
    root = fetch_dataset("gsc", tmp_path, source=src)
    assert (root / "yes").is_dir() and server.requests == []


def test_offline_refuses_to_download_and_says_what_to_do(server, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKWS_OFFLINE", "1")
    src = _source(server, _gsc_archive())
    with pytest.raises(DownloadError, match="switched off.*--data-dir"):
        fetch_dataset("gsc", tmp_path, source=src)
    assert server.requests == []
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / src.filename).write_bytes(server.files["/archive.tar.gz"])
    assert (fetch_dataset("gsc", tmp_path, source=src) / "yes").is_dir()  # an archive put there by hand is used


def test_archive_without_the_dataset_installs_nothing(server, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("readme.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    src = _source(server, buf.getvalue())
    with pytest.raises(DownloadError, match="nothing was installed"):
        fetch_dataset("gsc", tmp_path, source=src, backoff_s=0)
    assert not any((tmp_path / "datasets").iterdir())


def test_unpack_refuses_escaping_paths_and_links(tmp_path):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DownloadError, match="outside"):
        unpack_archive(bad, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tf:
        info = tarfile.TarInfo("x")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DownloadError, match="link"):
        unpack_archive(link, tmp_path / "out2")


def _esc50_folder(root: Path, esc10_only: bool = False) -> list[dict]:
    """ESC-50 layout with 3 ESC-10 classes (targets 0, 10, 38) and one other class (target 5)."""
    cats = {0: ("dog", True), 5: ("cat", False), 10: ("rain", True), 38: ("clock_tick", True)}
    rows = []
    for fold in range(1, 6):
        for t, (cat, e10) in cats.items():
            if esc10_only and not e10:
                continue
            name = f"{fold}-{100 + t}-A-{t}.wav"
            write_wav(root / "audio" / name, tone(200 + 10 * t, seconds=0.5, sr=44100), sr=44100)
            rows.append({"filename": name, "fold": fold, "target": t, "category": cat, "esc10": str(e10),
                         "src_file": str(100 + t + 1000 * fold), "take": "A"})
    (root / "meta").mkdir(parents=True, exist_ok=True)
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def test_esc10_from_full_and_from_subset_layout(tmp_path):
    # a 10-class ESC-10 with the real targets, inside a folder that also holds another class
    root = tmp_path / "esc"
    targets = [0, 1, 10, 11, 12, 20, 21, 38, 40, 41]
    rows = []
    for fold in range(1, 3):
        for t, cat in [*zip(targets, ESC10_CATEGORIES), (5, "cat")]:
            name = f"{fold}-{t}-A-{t}.wav"
            write_wav(root / "audio" / name, tone(200 + 10 * t, seconds=0.2), sr=16000)
            rows.append({"filename": name, "fold": fold, "target": t, "category": cat, "esc10": str(t != 5),
                         "src_file": f"{fold}{t}", "take": "A"})
    (root / "meta").mkdir()

    def write(rs):
        with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rs[0]))
            w.writeheader()
            w.writerows(rs)

    write(rows)
    ds = load_dataset("esc10", root)
    assert ds.name == "esc10" and ds.class_names == ESC10_CATEGORIES and len(ds) == 20
    assert sorted(set(ds.labels.tolist())) == list(range(10))
    i = next(k for k, sid in enumerate(ds.source_ids) if sid.endswith("-38-A-38.wav"))
    assert ds.class_names[ds.labels[i]] == "clock_tick" and ds.labels[i] == 7
    # an ESC-10-only layout: esc10 opens it, esc50 refuses it and points at esc10
    write([r for r in rows if r["target"] != 5])
    assert load_esc10(root).class_names == ESC10_CATEGORIES
    with pytest.raises(ValueError, match="targets are not 0..9.*--dataset esc10"):
        load_esc50(root)


def test_esc50_zip_download_wrapped_in_a_folder(server, tmp_path):
    src_dir = tmp_path / "src" / "ESC-50-master"
    _esc50_folder(src_dir)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(src_dir.rglob("*")):
            zf.write(p, p.relative_to(src_dir.parent).as_posix())
    server.files["/master.zip"] = buf.getvalue()
    src = SOURCES["esc50"].with_url(server.url("/master.zip"))  # no published checksum: contents are checked
    root = fetch_dataset("esc10", tmp_path / "cache", source=src, backoff_s=0)
    assert root == dataset_dir("esc50", tmp_path / "cache") and (root / "meta" / "esc50.csv").is_file()
    assert len(list((root / "audio").glob("*.wav"))) == 20


def test_esc50_archive_missing_clips_is_refused(server, tmp_path):
    src_dir = tmp_path / "src" / "ESC-50-master"
    rows = _esc50_folder(src_dir)
    (src_dir / "audio" / rows[3]["filename"]).unlink()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(src_dir.rglob("*")):
            zf.write(p, p.relative_to(src_dir.parent).as_posix())
    server.files["/master.zip"] = buf.getvalue()
    src = SOURCES["esc50"].with_url(server.url("/master.zip"))
    with pytest.raises(DownloadError, match="lacks 1 of the 20 clips"):
        fetch_dataset("esc50", tmp_path / "cache", source=src, backoff_s=0)
    assert find_downloaded("esc50", tmp_path / "cache") is None
    assert not any((tmp_path / "cache" / "downloads").iterdir())  # unverifiable archive: fetched again next time


def test_cli_downloads_without_data_dir(server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import edgekws.datasets.download as dl
    from edgekws.cli import app

    monkeypatch.setenv("EDGEKWS_CACHE", str(tmp_path))
    data = _gsc_archive()
    monkeypatch.setitem(dl.SOURCES, "gsc", _source(server, data))
    res = CliRunner().invoke(app, ["data", "info", "--dataset", "gsc", "--keywords", "yes,no"])
    assert res.exit_code == 0, res.output
    assert "6 clips" in res.output
    assert find_downloaded("gsc") is not None
    # a failing download: exit code 2 and the message says how to go on
    monkeypatch.setitem(dl.SOURCES, "esc50", SOURCES["esc50"].with_url(server.url("/missing.zip")))
    res = CliRunner().invoke(app, ["data", "info", "--dataset", "esc50"])
    assert res.exit_code == 2 and "404" in res.output and "--data-dir" in res.output

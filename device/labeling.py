"""Ask a person for labels: in the terminal, or on a small web page served on the loopback interface only.

Both read the label requests from a :class:`LabelStore` and write each answer at once (a class, a new class, or
skip), so either can be interrupted at any time.

Terminal (:func:`label_terminal`): shows the clip's spectrogram as text, plays it when a sound output exists, and
reads an answer: a class number or name, ``n`` for a new class, ``s`` to skip, ``r`` to replay, ``q`` to stop.

Web (:class:`LabelServer`): ``GET /`` is a page with one row per clip (play button, class menu with "new class…",
save and skip); ``GET /clip/<id>.wav`` serves a requested clip; ``POST /api/label`` with JSON
``{"id": 3, "label": "yes"}`` (``null`` = skip) records an answer. It binds to 127.0.0.1 / ::1 only and answers only
requests whose ``Host`` is a loopback name, and POSTs only with a JSON content type.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from edgekws.audio import AudioError, load_audio
from edgekws.features import FeatureConfig, mel_filterbank, power_frames

from .store import LabelStore

__all__ = ["PAGE", "LabelServer", "label_terminal", "play_clip", "spectrogram_lines"]

_SHADES = " .:-=+*#%@"


def spectrogram_lines(y: np.ndarray, fc: FeatureConfig, width: int = 64, height: int = 12) -> list[str]:
    """Log-mel spectrogram of ``y`` as ``height`` text rows of ``width`` characters (top row = high frequencies)."""
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if len(y) < fc.win_length:
        y = np.pad(y, (0, fc.win_length - len(y)))
    n = 1 + (len(y) - fc.win_length) // fc.hop_length
    idx = np.arange(fc.win_length)[None] + fc.hop_length * np.arange(n)[:, None]
    power = power_frames(y[idx], fc)
    mel = power @ mel_filterbank(fc.sample_rate, fc.n_fft, height, fc.fmin, fc.fmax).T
    db = 10 * np.log10(np.maximum(mel, 1e-10))
    cols = np.array_split(np.arange(n), min(width, n))
    img = np.stack([db[c].max(axis=0) for c in cols], axis=1)  # (height, width)
    top = img.max()
    lv = np.clip((img - (top - 60.0)) / 60.0, 0, 1)
    chars = np.array(list(_SHADES))[np.minimum((lv * len(_SHADES)).astype(int), len(_SHADES) - 1)]
    return ["".join(row) for row in chars[::-1]]


def play_clip(y: np.ndarray, sample_rate: int) -> bool:
    """Play ``y`` on the default output if there is one; False (silently) when there is none."""
    try:
        import sounddevice as sd

        sd.query_devices(None, "output")
        sd.play(np.asarray(y, np.float32), sample_rate)
        sd.wait()
        return True
    except Exception:  # no PortAudio, no output device, busy device: labelling goes on without sound
        return False


def label_terminal(
    store: LabelStore,
    classes: Sequence[str],
    fc: FeatureConfig,
    *,
    ask: Callable[[str], str] = input,
    show: Callable[[str], None] = print,
    play: Callable[[np.ndarray, int], bool] | None = play_clip,
) -> dict[str, int]:
    """Go through the pending requests; returns ``{"labeled", "skipped", "new_classes"}``."""
    known = list(classes) + [c for c in store.new_classes() if c not in classes]
    done = {"labeled": 0, "skipped": 0, "new_classes": 0}
    pending = store.pending()
    for k, clip in enumerate(pending, start=1):
        try:
            y = load_audio(clip.path, sample_rate=fc.sample_rate)
        except AudioError as exc:
            show(f"clip {clip.id}: cannot read {clip.path} ({exc}); skipped")
            continue
        show(
            f"\nclip {clip.id} ({k}/{len(pending)})  {Path(clip.path).name}  at {clip.start_s:.2f} s"
            + (f"  model says: {clip.predicted}" if clip.predicted else "")
        )
        for line in spectrogram_lines(y, fc):
            show("  |" + line + "|")
        played = play(y, fc.sample_rate) if play else False
        if not played:
            show("  (no sound output: judge by the spectrogram, or open the clip file)")
        menu = "  ".join(f"{i}={c}" for i, c in enumerate(known, start=1))
        while True:
            ans = ask(f"  {menu}\n  label [number/name, n=new class, s=skip, r=replay, q=quit]: ").strip()
            if ans == "q":
                return done
            if ans == "r":
                if play:
                    play(y, fc.sample_rate)
                continue
            if ans == "s":
                store.set_label(clip.id, None)
                done["skipped"] += 1
                break
            if ans == "n":
                name = ask("  new class name: ").strip()
                if not name:
                    show("  a class name cannot be empty")
                    continue
                if name not in known:
                    store.add_class(name)
                    known.append(name)
                    done["new_classes"] += 1
                store.set_label(clip.id, name)
                done["labeled"] += 1
                break
            label = None
            if ans.isdigit() and 1 <= int(ans) <= len(known):
                label = known[int(ans) - 1]
            elif ans in known:
                label = ans
            if label is None:
                show(f"  {ans!r} is not a class number or name; use n to add a new class")
                continue
            store.set_label(clip.id, label)
            done["labeled"] += 1
            break
    return done


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgekws: label clips</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}
.clip{display:flex;gap:.6em;align-items:center;padding:.5em;border-bottom:1px solid #ddd}
.clip.done{opacity:.5} .status{min-width:8em;color:#555}
</style></head><body>
<h1>Label clips</h1>
<p id="summary">loading…</p>
<div id="clips"></div>
<script>
let CLASSES = [];
async function load() {
  const r = await fetch('/api/clips');
  const data = await r.json();
  CLASSES = data.classes;
  document.getElementById('summary').textContent = data.clips.length + ' clip(s) to label';
  const box = document.getElementById('clips');
  box.innerHTML = '';
  for (const c of data.clips) box.appendChild(row(c));
}
function row(c) {
  const d = document.createElement('div');
  d.className = 'clip'; d.dataset.id = c.id; d.dataset.testid = 'clip';
  const audio = document.createElement('audio'); audio.src = c.url; audio.preload = 'none';
  audio.addEventListener('playing', () => { d.dataset.played = '1'; });
  const play = document.createElement('button'); play.textContent = '▶ play'; play.className = 'play';
  play.onclick = () => { audio.currentTime = 0; audio.play().catch(e => { d.dataset.playError = String(e); }); };
  const sel = document.createElement('select'); sel.className = 'label';
  for (const name of CLASSES) { const o = document.createElement('option'); o.value = o.textContent = name;
    if (name === c.predicted) o.selected = true; sel.appendChild(o); }
  const nw = document.createElement('option'); nw.value = '__new__'; nw.textContent = 'new class…'; sel.appendChild(nw);
  const txt = document.createElement('input'); txt.className = 'newclass'; txt.placeholder = 'new class name';
  txt.style.display = 'none';
  sel.onchange = () => { txt.style.display = sel.value === '__new__' ? '' : 'none'; };
  const save = document.createElement('button'); save.textContent = 'save'; save.className = 'save';
  const skip = document.createElement('button'); skip.textContent = 'skip'; skip.className = 'skip';
  const st = document.createElement('span'); st.className = 'status';
  const info = document.createElement('span'); info.textContent = '#' + c.id + ' at ' + c.start_s.toFixed(2) + ' s';
  async function send(label) {
    const r = await fetch('/api/label', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                         body: JSON.stringify({id: c.id, label: label})});
    const j = await r.json();
    if (r.ok) { st.textContent = label === null ? 'skipped' : 'saved: ' + label; d.classList.add('done');
      if (label !== null && !CLASSES.includes(label)) CLASSES.push(label); }
    else st.textContent = 'error: ' + j.error;
  }
  save.onclick = () => send(sel.value === '__new__' ? txt.value.trim() : sel.value);
  skip.onclick = () => send(null);
  d.append(play, audio, info, sel, txt, save, skip, st);
  return d;
}
load();
</script></body></html>
"""


def _is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class LabelServer:
    """The labelling page on ``http://127.0.0.1:<port>/`` (``port=0`` picks a free one)."""

    def __init__(self, store_path: str | Path, classes: Sequence[str], host: str = "127.0.0.1", port: int = 0):
        if not _is_loopback_host(host):
            raise ValueError(f"the label page serves the loopback interface only, not {host!r}")
        self.store_path = Path(store_path)
        self.classes = list(classes)
        self._lock = threading.Lock()
        self._store = LabelStore(self.store_path)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(body)

            def _json(self, code: int, obj) -> None:
                self._reply(code, json.dumps(obj).encode(), "application/json")

            def _host_ok(self) -> bool:
                host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
                if not _is_loopback_host(host):
                    self._json(403, {"error": "loopback only"})
                    return False
                return True

            def do_GET(self):
                if not self._host_ok():
                    return
                path = self.path.split("?", 1)[0]
                if path == "/":
                    self._reply(200, PAGE.encode(), "text/html; charset=utf-8")
                elif path == "/api/clips":
                    self._json(200, server.listing())
                elif path.startswith("/clip/") and path.endswith(".wav"):
                    try:
                        cid = int(path[len("/clip/") : -len(".wav")])
                        with server._lock:
                            clip = server._store.clip(cid)
                    except (ValueError, KeyError):
                        self._json(404, {"error": "no such clip"})
                        return
                    if not clip.requested or not Path(clip.path).is_file():
                        self._json(404, {"error": "no such clip"})
                        return
                    self._reply(200, Path(clip.path).read_bytes(), "audio/wav")
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self):
                if not self._host_ok():
                    return
                if self.path != "/api/label":
                    self._json(404, {"error": "not found"})
                    return
                if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
                    self._json(415, {"error": "send JSON"})
                    return
                try:
                    n = int(self.headers.get("Content-Length") or 0)
                    if n > 65536:
                        raise ValueError("request too large")
                    body = json.loads(self.rfile.read(n) or b"{}")
                    cid = int(body["id"])
                    label = body.get("label")
                    if label is not None and (not isinstance(label, str) or not label.strip()):
                        raise ValueError("label must be a non-empty string or null")
                    label = None if label is None else label.strip()
                    if label is not None and len(label) > 64:
                        raise ValueError("label is longer than 64 characters")
                    with server._lock:
                        if not server._store.clip(cid).requested:
                            raise KeyError(cid)  # only clips the device asked about are labelled here
                        if label is not None and label not in server.known():
                            server._store.add_class(label)
                        server._store.set_label(cid, label)
                except KeyError:
                    self._json(404, {"error": "no such clip"})
                    return
                except (ValueError, TypeError) as exc:
                    self._json(400, {"error": str(exc)})
                    return
                self._json(200, {"ok": True, "id": cid, "label": label})

        cls = ThreadingHTTPServer
        if ":" in host:
            import socket

            class _V6(ThreadingHTTPServer):
                address_family = socket.AF_INET6

            cls = _V6
        self.httpd = cls((host, int(port)), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    def known(self) -> list[str]:
        return self.classes + [c for c in self._store.new_classes() if c not in self.classes]

    def listing(self) -> dict:
        with self._lock:
            clips = self._store.clips(requested=True)
            known = self.known()
        return {
            "classes": known,
            "clips": [
                {
                    "id": c.id,
                    "url": f"/clip/{c.id}.wav",
                    "start_s": c.start_s,
                    "source": c.source,
                    "predicted": c.predicted,
                    "label": c.label,
                    "answered": c.labeled,
                }
                for c in clips
                if not c.labeled
            ],
        }

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    def start(self) -> LabelServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._store.close()

    def __enter__(self) -> LabelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

// The demo page: fetch the server's plan and the signed bundle, check every file the page runs, load
// onnxruntime-web, then listen to the microphone (or a WAV file) and show what `edgekws listen` shows: the input
// level, the top scores and the detections with their time stamps (seconds of audio since the start).
//
// Query parameters: channel=stable|beta (registry), autostart=1 (open the microphone at once, while the bundle
// loads; a browser may still ask for a tap), features=js|graph (MFCC bundles: frames from mfcc.js or from the bundle's waveform-in graph),
// threads=N (onnxruntime-web threads; more than one needs a cross-origin-isolated page, which this server sets up).
//
// window.edgekwsDemo exposes the page's state (phase, error, detections, per-hop times) to tests and benchmarks.

import { createEngine } from "./engine.js";
import { Resampler } from "./resample.js";
import { BundleRefused, verifyFile, verifyManifest } from "./verify.js";

const boot = JSON.parse(document.getElementById("boot").textContent);
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const MODEL_RATE = 16000;

const state = {
  phase: "loading", // loading | ready | listening | refused | error
  error: null,
  bundle: null,
  signature: null,
  files: [],
  sessions: 0,
  features: null,
  threads: null,
  detections: [],
  updates: 0,
  processedSeconds: 0,
  hopMs: [],
  hopClassifierMs: [],
  timeline: { opened: performance.timeOrigin, ready: null, listening: null, firstDetection: null },
  source: null,
};
window.edgekwsDemo = state;

let engine = null;
let capture = null;

function setPhase(phase, text) {
  state.phase = phase;
  $("phase").textContent = text;
}

function refuse(message, byServer = false) {
  state.phase = "refused";
  state.error = message;
  engine = null;
  dropCapture();
  $("phase").textContent = "This bundle was refused; nothing runs.";
  const box = $("refused");
  box.hidden = false;
  box.textContent = `${byServer ? "Refused by the server" : "Refused"}: ${message}`;
  for (const id of ["start", "stop", "wav"]) $(id).disabled = true;
}

function fail(message) {
  state.phase = "error";
  state.error = message;
  engine = null;
  dropCapture();
  $("phase").textContent = "The demo could not start.";
  const box = $("refused");
  box.hidden = false;
  box.textContent = message;
  for (const id of ["start", "stop", "wav"]) $(id).disabled = true;
}

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) {
    let detail = `${r.status} ${r.statusText}`;
    try {
      detail = (await r.json()).detail || detail;
    } catch { /* not JSON */ }
    const e = new Error(`${url}: ${detail}`);
    e.status = r.status;
    throw e;
  }
  return new Uint8Array(await r.arrayBuffer());
}

async function load() {
  $("target").textContent = `· ${boot.target}`;
  // autostart: the microphone opens while the bundle loads; its audio waits in the queue for the model
  if (params.get("autostart") === "1") startMic();
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register(boot.sw, { scope: boot.scope }).catch(() => {
      /* no offline use (e.g. an untrusted certificate): the page still works online */
    });
  }
  const features = params.get("features") || null;
  const q = new URLSearchParams({ channel: boot.channel || "" });
  let config;
  try {
    const r = await fetch(`${boot.base}/${boot.target}/config.json?${q}`);
    config = await r.json();
    if (!r.ok) {
      if (r.status === 409) return refuse(config.detail, true);
      return fail(config.detail || `the server answered ${r.status}`);
    }
  } catch (e) {
    return fail(`cannot reach the server and nothing is cached yet (${e.message})`);
  }
  const { bundle, plan, keys } = config;
  state.bundle = bundle;
  $("bundle").textContent = `bundle ${bundle.id} · ${bundle.source} · created ${bundle.created_at}`;

  let manifest;
  const files = {};
  try {
    const [mBytes, sig] = await Promise.all([fetchBytes(`${bundle.url}manifest.json`), fetchBytes(`${bundle.url}manifest.sig`)]);
    const v = await verifyManifest(mBytes, sig, { keys, bundleId: bundle.id, target: boot.target });
    manifest = v.manifest;
    state.signature = v.signature;
    const sigEl = $("signature");
    sigEl.textContent = v.signature.detail;
    sigEl.className = v.signature.status === "verified" ? "ok" : "warn";
    const classifiers = Object.values((manifest.graphs || {}).classifier || {});
    if (!classifiers.includes(plan.classifier)) {
      throw new BundleRefused(`${plan.classifier} is not a classifier graph of this bundle`);
    }
    state.features = manifest.frontend ? manifest.frontend.kind : (features || plan.features);
    const needed = [plan.classifier];
    if (manifest.frontend) needed.push(...Object.values(manifest.frontend.files || {}));
    else if (state.features === "graph") {
      if (!manifest.mfcc_graph) throw new BundleRefused("features=graph: this bundle carries no waveform-in MFCC graph");
      needed.push(manifest.mfcc_graph.file);
    }
    for (const name of needed) {
      const bytes = await fetchBytes(`${bundle.url}${encodeURIComponent(name)}`);
      const info = await verifyFile(manifest, name, bytes);
      files[name] = bytes;
      state.files.push(info);
      const li = document.createElement("li");
      li.textContent = `${name}  ${(info.size / 1024).toFixed(1)} KB  sha256 ${info.sha256.slice(0, 16)}… ✓`;
      $("files").appendChild(li);
    }
  } catch (e) {
    if (e instanceof BundleRefused) return refuse(e.message);
    return fail(`cannot load the bundle: ${e.message}`);
  }

  setPhase("loading", "Starting the model…");
  let ort;
  try {
    ort = await import(`${boot.ort}ort.wasm.min.mjs`);
  } catch (e) {
    return fail(`cannot load onnxruntime-web from ${boot.ort} (${e.message})`);
  }
  const wanted = Number(params.get("threads") || plan.threads || 1);
  state.threads = crossOriginIsolated ? Math.max(1, wanted) : 1;
  ort.env.wasm.numThreads = state.threads;
  ort.env.wasm.wasmPaths = boot.ort;
  ort.env.logLevel = "error";
  try {
    engine = await createEngine({ ort, manifest, files, plan: { ...plan, features: state.features } });
    state.sessions = 1 + (manifest.frontend ? 2 : state.features === "graph" ? 1 : 0);
    state.hopMs = engine.hopMs; // live: the engine appends one entry per hop
    state.hopClassifierMs = engine.hopClassifierMs;
  } catch (e) {
    return fail(`cannot start the model: ${e.message}`);
  }
  state.timeline.ready = performance.now();
  setPhase("ready", `Ready: ${manifest.classes.filter((c) => !c.startsWith("_")).join(", ")}`);
  $("start").disabled = false;
  $("wav").disabled = false;
  cacheForOffline(bundle, state.files.map((f) => f.name));
  renderTiming();
  if (capture) {
    if (!capture.starting) {
      setPhase("listening", listeningText());
      $("start").disabled = true;
      $("stop").disabled = false;
    }
    pump();
  }
}

/** Keep what this visit fetched in the service worker's cache, so the next visit works offline. */
async function cacheForOffline(bundle, names) {
  if (!("caches" in window)) return;
  try {
    const cache = await caches.open(boot.cache);
    const urls = [location.pathname + location.search, `${boot.base}/${boot.target}/config.json?${new URLSearchParams({ channel: boot.channel || "" })}`,
      `${bundle.url}manifest.json`, `${bundle.url}manifest.sig`, ...names.map((n) => `${bundle.url}${encodeURIComponent(n)}`),
      ...boot.precache];
    await cache.addAll(urls);
    state.cached = urls.length;
  } catch {
    /* offline use is a convenience; the page works without it */
  }
}

// Audio in ----------------------------------------------------------------------------------------------------

let queue = [];
let draining = null;

/** Feed the queued blocks to the engine, one at a time and in order; each block carries its resampler (null:
 * already 16 kHz). Blocks wait while the model is still loading. Resolves once the queue is empty. */
function pump() {
  if (!draining) {
    draining = (async () => {
      while (queue.length && engine) {
        const { block, resampler } = queue.shift();
        const y = resampler ? resampler.push(block) : block;
        if (!y.length) continue;
        const ups = await engine.feed(y);
        state.processedSeconds = engine.samplesSeen / MODEL_RATE;
        for (const u of ups) show(u);
      }
    })().catch((e) => fail(`processing stopped: ${e.message}`)).finally(() => {
      draining = null;
    });
  }
  return draining;
}

function listeningText() {
  return `Listening (microphone at ${capture.ctx.sampleRate} Hz, resampled to 16 kHz)…`;
}

async function startMic() {
  if (capture || state.phase === "refused" || state.phase === "error") return;
  capture = { starting: true };
  try {
    // everything that takes time comes before the microphone opens: the first samples it delivers are kept
    const ctx = new AudioContext();
    const resampler = new Resampler(ctx.sampleRate, MODEL_RATE);
    Object.assign(capture, { ctx, resampler });
    await ctx.audioWorklet.addModule(`${boot.assets}capture-worklet.js`);
    const node = new AudioWorkletNode(ctx, "edgekws-capture");
    const mute = ctx.createGain();
    mute.gain.value = 0;
    node.connect(mute).connect(ctx.destination);
    node.port.onmessage = (e) => {
      queue.push({ block: e.data, resampler });
      pump();
    };
    const resumed = ctx.resume();
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
    });
    if (!capture || capture.ctx !== ctx) { // refused or stopped meanwhile
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    ctx.createMediaStreamSource(stream).connect(node);
    await resumed;
    Object.assign(capture, { stream, node, starting: false });
    state.source = { kind: "microphone", rate: ctx.sampleRate };
    state.timeline.listening = performance.now();
    if (engine) {
      setPhase("listening", listeningText());
      $("start").disabled = true;
      $("stop").disabled = false;
    }
  } catch (e) {
    dropCapture();
    if (state.phase !== "refused") fail(`cannot open the microphone: ${e.message}`);
  }
}

/** Close the microphone and forget its audio (a refused bundle, an error, or Stop). */
function dropCapture() {
  const c = capture;
  capture = null;
  queue = [];
  if (!c) return;
  if (c.node) c.node.port.onmessage = null;
  if (c.stream) c.stream.getTracks().forEach((t) => t.stop());
  if (c.ctx) c.ctx.close().catch(() => {});
}

async function stopMic() {
  if (!capture) return;
  dropCapture();
  setPhase("ready", "Stopped.");
  $("start").disabled = false;
  $("stop").disabled = true;
}

async function runFile(file) {
  if (!engine) return;
  await stopMic();
  setPhase("listening", `Running ${file.name}…`);
  // decoding at 16 kHz: a 16 kHz file reaches the model sample for sample, others are resampled by the browser
  const ctx = new OfflineAudioContext(1, 1, MODEL_RATE);
  const buf = await ctx.decodeAudioData(await file.arrayBuffer());
  const n = buf.length;
  const y = new Float32Array(n);
  for (let c = 0; c < buf.numberOfChannels; c++) {
    const ch = buf.getChannelData(c);
    for (let i = 0; i < n; i++) y[i] += ch[i] / buf.numberOfChannels;
  }
  state.source = { kind: "file", name: file.name, seconds: n / MODEL_RATE };
  const block = 1600;
  for (let i = 0; i < n; i += block) {
    queue.push({ block: y.subarray(i, Math.min(n, i + block)), resampler: null });
    if (queue.length > 4) await pump();
    if ((i / block) % 20 === 0) await new Promise((r) => setTimeout(r, 0));
  }
  await pump();
  renderTiming();
  state.fileDone = true;
  setPhase("ready", `Ran ${file.name} (${(n / MODEL_RATE).toFixed(1)} s).`);
}

// Showing what happens ----------------------------------------------------------------------------------------

let lastRender = 0;

function show(u) {
  state.updates += 1;
  if (u.detection) {
    const d = u.detection;
    state.detections.push({ time: d.time, keyword: d.keyword, score: d.score, start: d.start });
    if (state.timeline.firstDetection === null) state.timeline.firstDetection = performance.now();
    const li = document.createElement("li");
    li.innerHTML = `<span class="kw"></span> <span class="muted"></span>`;
    li.querySelector(".kw").textContent = d.keyword;
    li.querySelector(".muted").textContent = `at ${d.time.toFixed(2)} s · score ${d.score.toFixed(2)}`;
    $("detections").prepend(li);
  }
  if (state.updates % 10 === 0) renderTiming();
  const now = performance.now();
  if (now - lastRender < 50 && !u.detection) return;
  lastRender = now;
  const frac = Math.min(1, Math.max(0, (u.levelDb + 60) / 60));
  $("level-bar").style.width = `${(frac * 100).toFixed(0)}%`;
  $("level").textContent = `${u.levelDb.toFixed(1)} dB at ${u.time.toFixed(2)} s`;
  const order = Array.from(u.probs.keys()).sort((a, b) => u.probs[b] - u.probs[a]).slice(0, 3);
  const ol = $("scores");
  ol.textContent = "";
  for (const k of order) {
    const li = document.createElement("li");
    const name = engine ? engine.classes[k] : String(k);
    li.className = name.startsWith("_") ? "silent" : "";
    li.textContent = `${name} ${u.probs[k].toFixed(2)}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(u.probs[k] * 8).toFixed(2)}rem`;
    li.appendChild(bar);
    ol.appendChild(li);
  }
}

function renderTiming() {
  if (!engine) return;
  const h = [...engine.hopMs].sort((a, b) => a - b);
  const q = (p) => (h.length ? h[Math.min(h.length - 1, Math.floor(p * h.length))].toFixed(2) : "–");
  const fe = engine.frontend;
  $("timing").textContent = `front end ${state.features}; a window of ${fe.windowSeconds.toFixed(2)} s every `
    + `${((fe.hopLevelFrames * fe.levelFrameMs) / 1000).toFixed(2)} s; per hop (features + inference) median `
    + `${q(0.5)} ms, p90 ${q(0.9)} ms over ${h.length} hops; onnxruntime-web ${state.threads} thread(s); `
    + `classifier ${engine.plan.classifier}, temperature ${engine.plan.temperature}`;
}

$("start").addEventListener("click", startMic);
$("stop").addEventListener("click", stopMic);
$("wav").addEventListener("change", (e) => {
  if (e.target.files && e.target.files[0]) runFile(e.target.files[0]);
});

load().catch((e) => fail(e.message));

// Audio (16 kHz float32) -> model inputs -> logits -> detections: the streaming part of `edgekws listen`
// (device/frontend.py and device/runtime.py) on onnxruntime-web. No DOM here.
//
// Front ends, as the bundle's manifest names them:
//   MFCC (no `frontend` entry)    normalised MFCC windows of n_frames frames, one every hop_level_frames frames;
//                                 the frames come from mfcc.js ("js") or from the bundle's waveform-in graph
//                                 frontend_mfcc.onnx ("graph", when the manifest lists `mfcc_graph`). Level of a
//                                 frame: c0 / sqrt(n_mels) (c0 of the orthonormal DCT is the mean log-mel energy).
//   speech-embedding              the bundle's two frozen graphs: mel frames in fixed blocks of 8 (1632 samples every
//                                 1280), one 96-d embedding per block from the last 76 mel frames, a window of the
//                                 last n_windows embeddings every 80 ms. Level of a mel frame: its mean, in dB.
// Window timing, level accounting and the decision equal runtime.py's, so the page and `listen --wav` report the
// same detections on the same audio.

import { DetectorRule } from "./detector.js";
import { FeatureConfig, StreamingMfcc, normalizeWindow, pyRound } from "./mfcc.js";

const f32 = Math.fround;

// speech_embedding.py
const MEL_HOP = 160, MEL_WINDOW = 512, STRIDE = 8, WINDOW_FRAMES = 76, MEL_BINS = 32, SR = 16000;
const BLOCK_SAMPLES = STRIDE * MEL_HOP; // 1280
const BLOCK_SPAN = (STRIDE - 1) * MEL_HOP + MEL_WINDOW; // 1632
const EMBEDDING_SPAN = (WINDOW_FRAMES - 1) * MEL_HOP + MEL_WINDOW; // 12512

function concat(a, b) {
  if (!a.length) return b;
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

async function run(ort, session, data, dims, output = null) {
  const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", data, dims) };
  const out = await session.run(feeds);
  return out[output || session.outputNames[0]];
}

/** MFCC windows from frames computed in JavaScript (mfcc.js) or by the waveform-in graph. */
class MfccFrontEnd {
  constructor(fc, hopMs, { ort = null, graph = null } = {}) {
    this.kind = "mfcc";
    this.fc = fc;
    this.hopLevelFrames = Math.max(1, pyRound(hopMs / fc.hop_ms)); // runtime.py: max(1, round(hop_ms / hop))
    this.levelFrameMs = fc.hop_ms;
    this.windowLevelFrames = fc.nFrames;
    this.windowSeconds = fc.clipSamples / fc.sample_rate;
    this.inputDims = [1, 1, fc.n_mfcc, fc.nFrames];
    this.ort = ort;
    this.graph = graph; // an InferenceSession of frontend_mfcc.onnx, or null for mfcc.js
    this.js = graph ? null : new StreamingMfcc(fc);
    this.pending = new Float32Array(0); // graph mode: samples not yet turned into frames
    this.ring = [];
    this.frames = 0;
    this.since = 0;
  }

  /** New un-normalised frames for these samples (graph mode waits until hop_level_frames frames are complete). */
  async newFrames(samples) {
    if (!this.graph) return this.js.push(samples);
    const { winLength: win, hopLength: hop, n_mfcc: C } = this.fc;
    this.pending = concat(this.pending, samples);
    if (this.pending.length < win) return [];
    const n = 1 + Math.floor((this.pending.length - win) / hop);
    if (n < this.hopLevelFrames) return [];
    const span = (n - 1) * hop + win;
    // mfcc_raw: frames before normalisation, which needs the whole window (done below, as for mfcc.js frames)
    const t = await run(this.ort, this.graph, this.pending.slice(0, span), [1, span], "mfcc_raw");
    const F = t.dims[t.dims.length - 1];
    const out = [];
    for (let j = 0; j < F; j++) {
      const f = new Float32Array(C);
      for (let c = 0; c < C; c++) f[c] = t.data[c * F + j];
      out.push(f);
    }
    this.pending = this.pending.slice(n * hop);
    return out;
  }

  /** Calls onLevel(db) per frame and onWindow(x, start, end) per complete window, in stream order. */
  async push(samples, onLevel, onWindow) {
    const fc = this.fc, T = fc.nFrames;
    for (const f of await this.newFrames(samples)) {
      this.ring.push(f);
      if (this.ring.length > T) this.ring.shift();
      this.frames += 1;
      this.since += 1;
      onLevel(f[0] / Math.sqrt(fc.n_mels));
      if (this.frames >= T && (this.frames === T || this.since >= this.hopLevelFrames)) {
        this.since = 0;
        const start = ((this.frames - T) * fc.hopLength) / fc.sample_rate;
        await onWindow(normalizeWindow(this.ring, fc), start, start + this.windowSeconds);
      }
    }
  }
}

/** Speech-embedding sequences from the bundle's mel and embedding graphs. */
class EmbeddingFrontEnd {
  constructor(config, ort, melSession, embSession) {
    this.kind = "speech-embedding";
    this.ort = ort;
    this.mel = melSession;
    this.emb = embSession;
    this.nWindows = config.n_windows;
    this.dim = config.embedding_dim;
    this.hopLevelFrames = STRIDE;
    this.levelFrameMs = (1000 * MEL_HOP) / SR;
    this.windowLevelFrames = (this.nWindows - 1) * STRIDE + (EMBEDDING_SPAN - MEL_HOP) / MEL_HOP;
    this.windowSeconds = ((this.nWindows - 1) * STRIDE * MEL_HOP + EMBEDDING_SPAN) / SR;
    this.inputDims = [1, 1, this.dim, this.nWindows];
    this.samples = new Float32Array(0);
    this.blocks = 0; // mel blocks computed
    this.melBlocks = []; // the last blocks an embedding still reads, each (8, 32) float32
    this.seq = []; // the last n_windows embeddings
  }

  async push(samples, onLevel, onWindow) {
    this.samples = concat(this.samples, samples);
    let start = 0;
    while (this.samples.length - start >= BLOCK_SPAN) {
      const x = new Float32Array(BLOCK_SPAN);
      for (let i = 0; i < BLOCK_SPAN; i++) x[i] = f32(this.samples[start + i] * 32767);
      const t = await run(this.ort, this.mel, x, [1, BLOCK_SPAN]);
      const mel = new Float32Array(STRIDE * MEL_BINS);
      for (let i = 0; i < mel.length; i++) mel[i] = f32(f32(t.data[i] / 10) + 2);
      start += BLOCK_SAMPLES;
      const b = this.blocks++;
      for (let r = 0; r < STRIDE; r++) {
        let s = 0;
        for (let c = 0; c < MEL_BINS; c++) s = f32(s + mel[r * MEL_BINS + c]);
        onLevel(f32(f32(f32(s / MEL_BINS) - 2) * 10));
      }
      this.melBlocks.push(mel);
      const need = Math.ceil(WINDOW_FRAMES / STRIDE); // blocks an embedding reads (10)
      if (this.melBlocks.length > need) this.melBlocks.shift();
      // embedding i reads mel frames [8 i, 8 i + 76): complete once block i + 9 exists
      const i = b - (need - 1);
      if (i < 0) continue;
      const win = new Float32Array(WINDOW_FRAMES * MEL_BINS);
      for (let r = 0; r < WINDOW_FRAMES; r++) {
        win.set(this.melBlocks[Math.floor(r / STRIDE)].subarray((r % STRIDE) * MEL_BINS, (r % STRIDE + 1) * MEL_BINS),
          r * MEL_BINS);
      }
      const e = await run(this.ort, this.emb, win, [1, WINDOW_FRAMES, MEL_BINS, 1]);
      this.seq.push(Float32Array.from(e.data));
      if (this.seq.length > this.nWindows) this.seq.shift();
      if (this.seq.length === this.nWindows) {
        const T = this.nWindows, D = this.dim;
        const xw = new Float32Array(D * T);
        for (let t2 = 0; t2 < T; t2++) for (let d = 0; d < D; d++) xw[d * T + t2] = this.seq[t2][d];
        const ws = ((i - T + 1) * BLOCK_SAMPLES) / SR;
        await onWindow(xw, ws, (i * BLOCK_SAMPLES + EMBEDDING_SPAN) / SR);
      }
    }
    this.samples = this.samples.slice(start);
  }
}

/**
 * The detector for one verified bundle.
 * @param {object} o
 * @param {object} o.ort          the onnxruntime-web module
 * @param {object} o.manifest     the verified manifest
 * @param {object} o.files        {name: Uint8Array} verified file contents
 * @param {object} o.plan         the server's plan: {classifier, temperature, detector, features}
 * @param {object} o.sessionOptions  onnxruntime-web session options
 */
export async function createEngine({ ort, manifest, files, plan, sessionOptions = {} }) {
  const opts = { executionProviders: ["wasm"], graphOptimizationLevel: "all", ...sessionOptions };
  const open = (name) => ort.InferenceSession.create(files[name], opts);
  const classifier = await open(plan.classifier);
  let frontend;
  const fe = manifest.frontend;
  if (fe && fe.kind === "speech-embedding") {
    frontend = new EmbeddingFrontEnd(fe.config, ort, await open(fe.files.melspectrogram), await open(fe.files.embedding));
  } else if (fe) {
    throw new Error(`this page does not know the front end ${JSON.stringify(fe.kind)}`);
  } else {
    const fc = new FeatureConfig(manifest.feature_config);
    const useGraph = plan.features === "graph";
    if (useGraph && !manifest.mfcc_graph) throw new Error("the bundle carries no waveform-in MFCC graph");
    const graph = useGraph ? await open(manifest.mfcc_graph.file) : null;
    frontend = new MfccFrontEnd(fc, plan.detector.hop_ms, { ort, graph });
  }
  return new Engine(ort, manifest, frontend, classifier, plan);
}

export class Engine {
  constructor(ort, manifest, frontend, classifier, plan) {
    this.ort = ort;
    this.manifest = manifest;
    this.frontend = frontend;
    this.classifier = classifier;
    this.plan = plan;
    this.classes = manifest.classes;
    this.rule = new DetectorRule({
      classes: this.classes, config: plan.detector, temperature: plan.temperature,
      windowLevelFrames: frontend.windowLevelFrames, hopLevelFrames: frontend.hopLevelFrames,
      levelFrameMs: frontend.levelFrameMs,
    });
    this.samplesSeen = 0;
    this.hopMs = []; // processing time of each hop: front end since the last window + classifier + rule
    this.hopClassifierMs = []; // ... of which the classifier and the rule
    this.busy = 0;
  }

  get windowSeconds() {
    return this.frontend.windowSeconds;
  }

  /** Feed 16 kHz samples; returns the updates (one per window) they completed, in order. */
  async feed(samples) {
    const updates = [];
    this.samplesSeen += samples.length;
    let t0 = performance.now();
    await this.frontend.push(samples, (db) => this.rule.addLevel(db), async (x, start, end) => {
      const tc = performance.now();
      const logits = await run(this.ort, this.classifier, x, this.frontend.inputDims);
      const upd = this.rule.decide(logits.data, start, end);
      upd.logits = Float32Array.from(logits.data);
      const t1 = performance.now();
      this.hopClassifierMs.push(t1 - tc);
      this.hopMs.push(this.busy + (t1 - t0));
      this.busy = 0;
      t0 = t1;
      updates.push(upd);
    });
    this.busy += performance.now() - t0;
    return updates;
  }
}

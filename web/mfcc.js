// MFCC in JavaScript, the same computation as edgekws/features.py (numpy), for bundles whose model reads MFCC.
//
// Per frame: Hann-windowed frame of win_length samples, zero-padded to n_fft -> power spectrum -> Slaney mel
// filterbank -> 10 log10(max(mel, amin)) -> orthonormal DCT-II -> the first n_mfcc coefficients. Frames start at
// the first sample without centre padding, so a stream gives the frames of the whole recording. The constants
// (window, filterbank, DCT) are rounded to float32 as numpy rounds them before use; the arithmetic runs in float64,
// so results agree with numpy's float32 path to about 1e-4 (measured by tests/test_web_demo.py).
//
// Layout of a window: Float32Array of n_mfcc * n_frames, row-major (n_mfcc, n_frames), i.e. the model input
// (1, 1, n_mfcc, n_frames) without its leading axes.

const f32 = Math.fround;

/** The bundle's FeatureConfig (manifest.feature_config) with the derived sizes features.py computes. */
export class FeatureConfig {
  constructor(d) {
    Object.assign(this, {
      sample_rate: 16000, window_ms: 50, hop_ms: 20, n_fft: 1024, n_mels: 40, n_mfcc: 40, fmin: 20, fmax: 7600,
      clip_seconds: 1, amin: 1e-10, normalization: "global", mean: null, std: null,
    }, d);
    this.winLength = pyRound(this.sample_rate * this.window_ms / 1000);
    this.hopLength = pyRound(this.sample_rate * this.hop_ms / 1000);
    this.clipSamples = pyRound(this.sample_rate * this.clip_seconds);
    this.nFrames = 1 + Math.floor((this.clipSamples - this.winLength) / this.hopLength);
    if (this.winLength > this.n_fft) throw new Error(`window of ${this.winLength} samples exceeds n_fft ${this.n_fft}`);
    if (this.normalization === "global" && (!this.mean || !this.std)) {
      throw new Error("the feature configuration uses global normalisation but carries no mean/std");
    }
  }
}

/** Python's round(): halves go to the even neighbour. */
export function pyRound(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function hzToMel(f) {
  const fSp = 200 / 3, minLogHz = 1000, minLogMel = minLogHz / fSp, logstep = Math.log(6.4) / 27;
  return f >= minLogHz ? minLogMel + Math.log(Math.max(f, 1e-10) / minLogHz) / logstep : f / fSp;
}

function melToHz(m) {
  const fSp = 200 / 3, minLogHz = 1000, minLogMel = minLogHz / fSp, logstep = Math.log(6.4) / 27;
  return m >= minLogMel ? minLogHz * Math.exp(logstep * (m - minLogMel)) : fSp * m;
}

/** numpy.linspace(start, stop, num) (endpoint included, the last value exactly ``stop``). */
function linspace(start, stop, num) {
  const out = new Float64Array(num);
  const step = (stop - start) / (num - 1);
  for (let i = 0; i < num; i++) out[i] = i * step + start;
  if (num > 1) out[num - 1] = stop;
  return out;
}

/** Slaney-normalised triangular mel filters, n_mels rows of n_fft/2+1 (features.mel_filterbank), float32-rounded. */
export function melFilterbank(sr, nFft, nMels, fmin, fmax) {
  const nBins = Math.floor(nFft / 2) + 1;
  const fftFreqs = linspace(0, sr / 2, nBins);
  const mels = linspace(hzToMel(fmin), hzToMel(fmax), nMels + 2);
  const pts = mels.map(melToHz);
  const w = [];
  for (let m = 0; m < nMels; m++) {
    const row = new Float64Array(nBins);
    const lo = pts[m + 1] - pts[m], hi = pts[m + 2] - pts[m + 1];
    const enorm = 2 / (pts[m + 2] - pts[m]);
    for (let k = 0; k < nBins; k++) {
      const lower = -(pts[m] - fftFreqs[k]) / lo;
      const upper = (pts[m + 2] - fftFreqs[k]) / hi;
      row[k] = f32(Math.max(0, Math.min(lower, upper)) * enorm);
    }
    // the non-zero span of each filter, so a frame costs sum(span) multiplications instead of n_mels * n_bins
    let a = 0, b = nBins;
    while (a < nBins && row[a] === 0) a++;
    while (b > a && row[b - 1] === 0) b--;
    w.push({ row, a, b });
  }
  return w;
}

/** Orthonormal DCT-II rows (n_mfcc x n_mels), float32-rounded (features.dct_matrix). */
export function dctMatrix(nMels, nMfcc) {
  const d = [];
  for (let k = 0; k < nMfcc; k++) {
    const row = new Float64Array(nMels);
    for (let n = 0; n < nMels; n++) {
      let v = Math.cos(Math.PI / nMels * (n + 0.5) * k) * Math.sqrt(2 / nMels);
      if (k === 0) v /= Math.sqrt(2);
      row[n] = f32(v);
    }
    d.push(row);
  }
  return d;
}

/** Periodic Hann window, float32-rounded. */
export function hann(n) {
  const w = new Float64Array(n);
  for (let i = 0; i < n; i++) w[i] = f32(0.5 - 0.5 * Math.cos(2 * Math.PI * i / n));
  return w;
}

/** In-place radix-2 complex FFT of length n (a power of two). */
class FFT {
  constructor(n) {
    this.n = n;
    this.rev = new Uint32Array(n);
    const bits = Math.log2(n);
    for (let i = 0; i < n; i++) {
      let r = 0;
      for (let b = 0; b < bits; b++) r |= ((i >> b) & 1) << (bits - 1 - b);
      this.rev[i] = r;
    }
    this.cos = new Float64Array(n / 2);
    this.sin = new Float64Array(n / 2);
    for (let i = 0; i < n / 2; i++) {
      this.cos[i] = Math.cos(2 * Math.PI * i / n);
      this.sin[i] = -Math.sin(2 * Math.PI * i / n);
    }
  }

  run(re, im) {
    const n = this.n, rev = this.rev;
    for (let i = 0; i < n; i++) {
      const j = rev[i];
      if (j > i) {
        let t = re[i]; re[i] = re[j]; re[j] = t;
        t = im[i]; im[i] = im[j]; im[j] = t;
      }
    }
    for (let size = 2; size <= n; size <<= 1) {
      const half = size >> 1, step = n / size;
      for (let start = 0; start < n; start += size) {
        for (let k = 0; k < half; k++) {
          const c = this.cos[k * step], s = this.sin[k * step];
          const a = start + k, b = a + half;
          const tr = re[b] * c - im[b] * s;
          const ti = re[b] * s + im[b] * c;
          re[b] = re[a] - tr; im[b] = im[a] - ti;
          re[a] += tr; im[a] += ti;
        }
      }
    }
  }
}

/** Un-normalised MFCC of single frames: ``frame(samples, offset)`` reads win_length samples from ``offset``. */
export class MfccFrame {
  constructor(cfg) {
    this.cfg = cfg;
    this.window = hann(cfg.winLength);
    this.mel = melFilterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax);
    this.dct = dctMatrix(cfg.n_mels, cfg.n_mfcc);
    const n = cfg.n_fft;
    this.pow2 = (n & (n - 1)) === 0;
    this.fft = this.pow2 ? new FFT(n) : null;
    this.re = new Float64Array(n);
    this.im = new Float64Array(n);
    this.power = new Float64Array(Math.floor(n / 2) + 1);
    this.logmel = new Float64Array(cfg.n_mels);
  }

  /** Float32Array(n_mfcc) of the frame starting at ``offset`` in ``samples`` (float32 audio). */
  frame(samples, offset) {
    const { cfg, re, im, power, logmel, window } = this;
    const n = cfg.n_fft, win = cfg.winLength, nBins = power.length;
    re.fill(0);
    im.fill(0);
    for (let i = 0; i < win; i++) re[i] = f32(samples[offset + i] * window[i]);
    if (this.pow2) {
      this.fft.run(re, im);
      for (let k = 0; k < nBins; k++) power[k] = f32(re[k] * re[k] + im[k] * im[k]);
    } else {
      for (let k = 0; k < nBins; k++) {
        let a = 0, b = 0;
        for (let i = 0; i < win; i++) {
          const ang = 2 * Math.PI * ((k * i) % n) / n;
          a += re[i] * Math.cos(ang);
          b -= re[i] * Math.sin(ang);
        }
        power[k] = f32(a * a + b * b);
      }
    }
    for (let m = 0; m < cfg.n_mels; m++) {
      const { row, a, b } = this.mel[m];
      let s = 0;
      for (let k = a; k < b; k++) s += power[k] * row[k];
      logmel[m] = f32(10 * Math.log10(Math.max(f32(s), cfg.amin)));
    }
    const out = new Float32Array(cfg.n_mfcc);
    for (let k = 0; k < cfg.n_mfcc; k++) {
      const row = this.dct[k];
      let s = 0;
      for (let m = 0; m < cfg.n_mels; m++) s += logmel[m] * row[m];
      out[k] = s;
    }
    return out;
  }
}

/** Incremental MFCC over a stream (features.StreamingMFCC): ``push(samples)`` returns the frames that became
 * complete, each a Float32Array(n_mfcc), aligned to the first sample pushed. */
export class StreamingMfcc {
  constructor(cfg) {
    this.cfg = cfg;
    this.frameOf = new MfccFrame(cfg);
    this.pending = new Float32Array(0);
    this.framesEmitted = 0;
  }

  push(samples) {
    const { winLength: win, hopLength: hop } = this.cfg;
    let buf = samples;
    if (this.pending.length) {
      buf = new Float32Array(this.pending.length + samples.length);
      buf.set(this.pending);
      buf.set(samples, this.pending.length);
    }
    if (buf.length < win) {
      this.pending = Float32Array.from(buf);
      return [];
    }
    const nNew = 1 + Math.floor((buf.length - win) / hop);
    const out = [];
    for (let j = 0; j < nNew; j++) out.push(this.frameOf.frame(buf, j * hop));
    this.pending = buf.slice(nNew * hop);
    this.framesEmitted += nNew;
    return out;
  }
}

/** Batch MFCC of a whole recording: (n_mfcc, n_frames) as an array of frames (tests and the benchmark). */
export function mfccFrames(y, cfg) {
  const m = new MfccFrame(cfg);
  const n = 1 + Math.floor((y.length - cfg.winLength) / cfg.hopLength);
  const out = [];
  for (let j = 0; j < n; j++) out.push(m.frame(y, j * cfg.hopLength));
  return out;
}

/** A window of frames (array of Float32Array(n_mfcc), oldest first) normalised as ``cfg.normalization`` says,
 * laid out (n_mfcc, T) (features.normalize). */
export function normalizeWindow(frames, cfg) {
  const C = cfg.n_mfcc, T = frames.length;
  const x = new Float32Array(C * T);
  if (cfg.normalization === "none") {
    for (let t = 0; t < T; t++) for (let c = 0; c < C; c++) x[c * T + t] = frames[t][c];
    return x;
  }
  if (cfg.normalization === "utterance") {
    for (let c = 0; c < C; c++) {
      let s = 0;
      for (let t = 0; t < T; t++) s += frames[t][c];
      const m = s / T;
      let v = 0;
      for (let t = 0; t < T; t++) v += (frames[t][c] - m) ** 2;
      const sd = Math.sqrt(v / T) + 1e-5;
      for (let t = 0; t < T; t++) x[c * T + t] = (frames[t][c] - m) / sd;
    }
    return x;
  }
  for (let c = 0; c < C; c++) {
    const m = f32(cfg.mean[c]), sd = f32(cfg.std[c]);
    for (let t = 0; t < T; t++) x[c * T + t] = f32(f32(frames[t][c] - m) / sd);
  }
  return x;
}

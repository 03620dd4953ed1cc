// Streaming sample-rate conversion from the capture device's rate (44.1 kHz, 48 kHz, ...) to the model's 16 kHz.
//
// Windowed-sinc interpolation (Kaiser window): output sample n lies at input position n * in_rate / out_rate,
// exactly, and is a weighted sum of the input samples within ``zeros`` zero crossings of the low-pass kernel on
// both sides. The kernel is linear-phase and centred on that position, so output time equals input time (no delay
// to compensate; the resampler waits for the input it needs). Cut-off: ``rolloff`` of the lower Nyquist frequency.
// For a rational ratio L/M with L <= 4096 the kernel is tabulated per phase; each phase is normalised to unit DC
// gain. Feeding a signal in blocks of any size gives the same output as feeding it at once (tests).

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

function besselI0(x) {
  let sum = 1, term = 1;
  for (let k = 1; k < 50; k++) {
    term *= (x / (2 * k)) ** 2;
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return sum;
}

export class Resampler {
  /** @param {number} inRate @param {number} outRate */
  constructor(inRate, outRate, { zeros = 32, rolloff = 0.97, beta = 8.6 } = {}) {
    if (!(inRate > 0 && outRate > 0) || !Number.isInteger(inRate) || !Number.isInteger(outRate)) {
      throw new Error(`sample rates must be positive integers, got ${inRate} -> ${outRate}`);
    }
    this.inRate = inRate;
    this.outRate = outRate;
    const g = gcd(inRate, outRate);
    this.L = outRate / g; // L output samples for every M input samples
    this.M = inRate / g;
    this.fc = 0.5 * Math.min(1, outRate / inRate) * rolloff; // cut-off, cycles per input sample
    this.K = Math.ceil(zeros / (2 * this.fc)); // half-width of the kernel in input samples
    this.beta = beta;
    this.i0beta = besselI0(beta);
    this.table = this.L <= 4096 ? Array.from({ length: this.L }, (_, p) => this.taps(p / this.L)) : null;
    this.reset();
  }

  reset() {
    // input samples kept: absolute index of buf[0] is this.base; output n sits at input i + p / L
    this.base = -this.K; // K zeros of history before the first sample
    this.buf = new Float32Array(this.K);
    this.i = 0;
    this.p = 0;
  }

  /** Kernel taps for input offsets -K+1 .. K around the position i + frac. */
  taps(frac) {
    const { K, fc, beta, i0beta } = this;
    const h = new Float64Array(2 * K);
    let sum = 0;
    for (let j = 0; j < 2 * K; j++) {
      const d = j - K + 1 - frac; // input sample i + (j - K + 1) relative to the output position
      const x = 2 * fc * d;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const r = d / K;
      const w = Math.abs(r) >= 1 ? 0 : besselI0(beta * Math.sqrt(1 - r * r)) / i0beta;
      h[j] = 2 * fc * sinc * w;
      sum += h[j];
    }
    for (let j = 0; j < 2 * K; j++) h[j] /= sum;
    return h;
  }

  /** Resample the next block of input; returns the output samples that became computable. */
  push(x) {
    if (this.L === 1 && this.M === 1) return Float32Array.from(x);
    const merged = new Float32Array(this.buf.length + x.length);
    merged.set(this.buf);
    merged.set(x, this.buf.length);
    const end = this.base + merged.length; // one past the last input index known
    const { K, L, M } = this;
    // output (i, p) needs inputs i - K + 1 .. i + K: count the outputs that are computable now
    const last = end - K - 1; // the largest i allowed
    const n = last < this.i ? 0 : Math.floor(((last - this.i) * L + (L - 1 - this.p)) / M) + 1;
    const out = new Float32Array(n);
    const taps = 2 * K;
    for (let q = 0; q < n; q++) {
      const h = this.table ? this.table[this.p] : this.taps(this.p / L);
      const o = this.i - K + 1 - this.base;
      let s = 0;
      for (let j = 0; j < taps; j++) s += merged[o + j] * h[j];
      out[q] = s;
      this.p += M;
      this.i += Math.floor(this.p / L);
      this.p %= L;
    }
    const keepFrom = Math.max(0, this.i - K + 1 - this.base);
    this.buf = merged.slice(keepFrom);
    this.base += keepFrom;
    return out;
  }
}

// The keyword detection rule of `edgekws listen` (device/runtime.py, Detector._decide), in JavaScript.
//
// This file must follow device/runtime.py: when the rule there changes, change it here (tests/test_web_demo.py
// runs both on the same scripted inputs and compares every decision). Its parameters come from the server's
// /demo config, which takes them from edgekws.device.runtime.DetectorConfig and the bundle:
//
//   temperature     logits are divided by it before the softmax (fitted on the bundle's coreset, as listen does)
//   smooth          posteriors are averaged over the last `smooth` inferences
//   threshold(s)    a keyword fires when its smoothed posterior is the largest and reaches its threshold ...
//   gate_db         ... the window's loudest level frame is at least gate_db above the noise floor (the 10th
//                   percentile of the level frames of the last floor_s seconds; 0 turns the gate off) ...
//   refractory_s    ... no detection happened in the last refractory_s seconds (of stream time) ...
//                   ... and the keyword re-armed: its posterior fell below its threshold (or the input went
//                   quiet) since it last fired. Classes whose names start with "_" never fire.
//
// The front end reports a level (dB) per level frame (20 ms MFCC frame or 10 ms mel frame) with addLevel()
// before it asks for the decision on a window that those frames completed; window_level_frames and
// hop_level_frames say how many level frames a window spans and how many arrive per inference.
//
// numpy computes the posteriors and their average in float32; Math.fround reproduces those roundings, so a
// posterior that sits exactly on a threshold is decided the same way here.

const f32 = Math.fround;

/** Python's round() (halves to even), as runtime.py sizes its level history with it. */
function pyRound(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** numpy.percentile(values, q) with the default linear interpolation. */
export function percentile(values, q) {
  const a = Float64Array.from(values).sort();
  const pos = (q / 100) * (a.length - 1);
  const lo = Math.floor(pos), hi = Math.min(lo + 1, a.length - 1);
  const t = pos - lo, d = a[hi] - a[lo];
  return t >= 0.5 ? a[hi] - d * (1 - t) : a[lo] + d * t;
}

/** softmax(logits / T) as runtime.softmax computes it: float32 logits / T in float32, then float64, then float32. */
export function softmax(logits, temperature) {
  const T = f32(temperature || 1);
  const z = Array.from(logits, (v) => f32(f32(v) / T));
  const m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return Float32Array.from(e, (v) => v / s);
}

export class DetectorRule {
  /**
   * @param {object} o
   * @param {string[]} o.classes  class names in logit order
   * @param {object} o.config     {threshold, thresholds, smooth, refractory_s, gate_db, floor_s}
   * @param {number} o.temperature
   * @param {number} o.windowLevelFrames  level frames one window spans
   * @param {number} o.hopLevelFrames     level frames between inferences
   * @param {number} o.levelFrameMs       duration of one level frame
   */
  constructor({ classes, config, temperature = 1, windowLevelFrames, hopLevelFrames, levelFrameMs }) {
    this.classes = classes;
    this.cfg = config;
    this.temperature = temperature;
    this.T = windowLevelFrames;
    this.hop = hopLevelFrames;
    const per = config.thresholds || {};
    this.thr = Float32Array.from(classes, (c) => (c in per ? per[c] : config.threshold));
    this.fires = classes.map((c) => !c.startsWith("_"));
    this.maxLevels = Math.max(this.T, pyRound((config.floor_s * 1000) / levelFrameMs));
    this.reset();
  }

  reset() {
    this.history = [];
    this.levels = [];
    this.lastFire = -Infinity;
    this.armed = this.classes.map(() => true);
  }

  /** One level frame (dB), in stream order. */
  addLevel(db) {
    this.levels.push(db);
    if (this.levels.length > this.maxLevels) this.levels.shift();
  }

  /**
   * Decide on one window: raw logits, the window's start and end in stream seconds.
   * @returns {{time:number, levelDb:number, probs:Float32Array, detection:null|{time:number, keyword:string, score:number, start:number}}}
   */
  decide(logits, start, end) {
    const probs = softmax(logits, this.temperature);
    this.history.push(probs);
    if (this.history.length > this.cfg.smooth) this.history.shift();
    const C = probs.length;
    const smooth = new Float32Array(C);
    for (let c = 0; c < C; c++) {
      let acc = this.history[0][c];
      for (let h = 1; h < this.history.length; h++) acc = f32(acc + this.history[h][c]);
      smooth[c] = acc / this.history.length;
    }
    const lv = this.levels;
    const level = lv.length ? Math.max(...lv.slice(-this.hop)) : -100;
    const loud = this.cfg.gate_db <= 0 || Math.max(...lv.slice(-this.T)) - percentile(lv, 10) >= this.cfg.gate_db;
    let k = 0;
    for (let c = 1; c < C; c++) if (smooth[c] > smooth[k]) k = c;
    for (let c = 0; c < C; c++) if (smooth[c] < this.thr[c] || !loud) this.armed[c] = true;
    const upd = { time: end, levelDb: level, probs: smooth, detection: null };
    if (this.fires[k] && loud && smooth[k] >= this.thr[k] && this.armed[k]
        && end - this.lastFire >= this.cfg.refractory_s) {
      this.lastFire = end;
      this.armed[k] = false;
      upd.detection = { time: end, keyword: this.classes[k], score: smooth[k], start };
    }
    return upd;
  }
}

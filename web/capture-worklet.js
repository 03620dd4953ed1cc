// AudioWorklet: hands the microphone's samples (mono: the mean of the input channels, at the AudioContext's rate)
// to the page in blocks of about 20 ms. The page resamples them to 16 kHz.
class EdgekwsCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = Math.max(128, Math.round(sampleRate / 50));
    this.buf = new Float32Array(this.block);
    this.n = 0;
  }

  process(inputs) {
    const chans = inputs[0];
    if (chans && chans.length) {
      const len = chans[0].length;
      for (let i = 0; i < len; i++) {
        let s = 0;
        for (let c = 0; c < chans.length; c++) s += chans[c][i];
        this.buf[this.n++] = s / chans.length;
        if (this.n === this.block) {
          this.port.postMessage(this.buf, [this.buf.buffer]);
          this.buf = new Float32Array(this.block);
          this.n = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("edgekws-capture", EdgekwsCapture);

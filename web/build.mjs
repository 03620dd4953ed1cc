// Runs after `npm ci` in this folder: copies the three onnxruntime-web files the demo page loads into dist/ort/
// and writes a brotli (.br) and a gzip (.gz) copy of each, so the Python server can send the smallest encoding a
// browser accepts without compressing 11 MB per request. dist/ort/assets.json lists every file with its size and
// sha256; the server reads it to find the runtime and to report the page weight.
//
// Usage: node build.mjs   (idempotent: files whose source did not change are left as they are)
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, writeFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const pkgDir = join(here, "node_modules", "onnxruntime-web");
const src = join(pkgDir, "dist");
const out = join(here, "dist", "ort");
// ort.wasm.min.mjs: the WebAssembly-only build (no WebGL/WebGPU code); it imports the Emscripten glue
// ort-wasm-simd-threaded.mjs, which loads ort-wasm-simd-threaded.wasm (also used with one thread).
const FILES = ["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"];

function sha256(buf) {
  return createHash("sha256").update(buf).digest("hex");
}

function writeAtomic(path, data) {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

if (!existsSync(src)) {
  console.error(`build.mjs: ${src} is missing; run \`npm ci\` in ${here} first`);
  process.exit(1);
}
const version = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8")).version;
mkdirSync(out, { recursive: true });
const indexPath = join(out, "assets.json");
const before = existsSync(indexPath) ? JSON.parse(readFileSync(indexPath, "utf8")) : { files: {} };
const index = { package: "onnxruntime-web", version, files: {} };
for (const name of FILES) {
  const data = readFileSync(join(src, name));
  const digest = sha256(data);
  const old = before.files?.[name];
  const have = (suffix) => existsSync(join(out, name + suffix));
  if (old && old.sha256 === digest && have("") && have(".br") && have(".gz")) {
    index.files[name] = old;
    continue;
  }
  const br = brotliCompressSync(data, {
    params: {
      [constants.BROTLI_PARAM_QUALITY]: 11,
      [constants.BROTLI_PARAM_LGWIN]: 24,
      [constants.BROTLI_PARAM_SIZE_HINT]: data.length,
    },
  });
  const gz = gzipSync(data, { level: 9 });
  writeAtomic(join(out, name), data);
  writeAtomic(join(out, name + ".br"), br);
  writeAtomic(join(out, name + ".gz"), gz);
  index.files[name] = { size: data.length, sha256: digest, br: br.length, gz: gz.length };
  console.log(`dist/ort/${name}: ${data.length} bytes, brotli ${br.length}, gzip ${gz.length}`);
}
writeAtomic(indexPath, JSON.stringify(index, null, 2) + "\n");

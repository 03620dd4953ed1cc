// Checking a bundle in the browser before anything of it runs (edgekws/bundle.py is the reference).
//
// manifest.sig is the ed25519 signature of the exact bytes of manifest.json; the manifest lists every file with
// its sha256 and size. The page fetches the manifest, its signature and only the files it runs, and refuses the
// bundle when
//   - the signature does not verify against one of the keys the server pinned (where the browser implements
//     Ed25519 in WebCrypto; otherwise it says "integrity only": every file is still checked against the manifest,
//     and the manifest against the id the server gave for it, sha256(manifest.json)[:16]),
//   - the manifest is not an edgekws bundle this page understands, or names another bundle id or target,
//   - a file it needs is not in the manifest, or its size or sha256 differs.
// Every refusal is a BundleRefused error whose message says what is wrong.

export class BundleRefused extends Error {
  constructor(message) {
    super(message);
    this.name = "BundleRefused";
  }
}

const FORMAT = "edgekws-bundle";
const FORMAT_VERSION = 1;

export function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromBase64(s) {
  const bin = atob(s);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

export async function sha256(bytes) {
  return hex(await crypto.subtle.digest("SHA-256", bytes));
}

/** True when this browser verifies Ed25519 signatures in WebCrypto. */
export async function ed25519Supported() {
  try {
    // any valid 32-byte point: the key of the RFC 8032 test vector 1
    const raw = Uint8Array.from("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a".match(/../g),
      (h) => parseInt(h, 16));
    await crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
    return true;
  } catch {
    return false;
  }
}

/**
 * Check the manifest and its signature.
 * @param {Uint8Array} manifestBytes  exact bytes of manifest.json
 * @param {Uint8Array} signature      the 64 bytes of manifest.sig
 * @param {object} o
 * @param {{key_id:string, public_key:string}[]} o.keys  pinned ed25519 keys (raw, base64); empty = trust the
 *        key the manifest carries (integrity, not authorship)
 * @param {string} [o.bundleId]  the id the server gave: sha256(manifest.json)[:16]
 * @param {string} [o.target]    the target the page was opened for
 * @returns {Promise<{manifest:object, signature:{status:string, key_id:string|null, detail:string}}>}
 */
export async function verifyManifest(manifestBytes, signature, { keys = [], bundleId = null, target = null } = {}) {
  const ed25519 = await ed25519Supported();
  // with pinned keys the signature is checked first, on the raw bytes, before anything of the manifest is read
  let sig = null;
  if (ed25519 && keys.length) sig = await checkSignature(manifestBytes, signature, keys, false);
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(manifestBytes));
  } catch (e) {
    throw new BundleRefused(`manifest.json is not valid JSON (${e.message})`);
  }
  if (!manifest || manifest.format !== FORMAT) throw new BundleRefused("manifest.json is not an edgekws bundle");
  if (!(manifest.format_version <= FORMAT_VERSION)) {
    throw new BundleRefused(`bundle format version ${manifest.format_version} is newer than this page understands`);
  }
  if (ed25519 && !keys.length) {
    const k = manifest.public_key || {};
    sig = await checkSignature(manifestBytes, signature, [{ key_id: k.key_id || "", public_key: k.public_key }], true);
  }
  if (!ed25519) {
    sig = { status: "integrity-only", key_id: null,
      detail: "integrity only: this browser cannot verify ed25519 signatures; every file is checked against the "
        + "manifest and the manifest against the bundle id the server named" };
  }
  const digest = await sha256(manifestBytes);
  if (bundleId && digest.slice(0, 16) !== bundleId) {
    throw new BundleRefused(`manifest.json is not bundle ${bundleId} (its sha256 starts ${digest.slice(0, 16)})`);
  }
  if (target && manifest.target !== target) {
    throw new BundleRefused(`bundle is for target ${manifest.target}, not ${target}`);
  }
  return { manifest, signature: sig };
}

async function checkSignature(manifestBytes, signature, keys, embedded) {
  if (signature.length !== 64) throw new BundleRefused(`manifest.sig has ${signature.length} bytes, not 64`);
  for (const k of keys) {
    if (!k.public_key) continue;
    let key;
    try {
      key = await crypto.subtle.importKey("raw", fromBase64(k.public_key), { name: "Ed25519" }, false, ["verify"]);
    } catch {
      continue; // not a valid ed25519 key
    }
    if (await crypto.subtle.verify({ name: "Ed25519" }, key, signature, manifestBytes)) {
      return embedded
        ? { status: "embedded-key", key_id: k.key_id || null,
          detail: "signature checked against the key inside the manifest: integrity, not authorship" }
        : { status: "verified", key_id: k.key_id,
          detail: `ed25519 signature verified against the pinned key ${k.key_id.slice(0, 16)}…` };
    }
  }
  const which = embedded ? "the key inside the manifest"
    : `the pinned key${keys.length > 1 ? "s" : ""} ${keys.map((k) => `${k.key_id.slice(0, 16)}…`).join(", ")}`;
  throw new BundleRefused(`manifest signature does not verify against ${which}: the manifest was changed after `
    + "signing, or someone else signed it");
}

/**
 * Check one file against the manifest.
 * @returns {Promise<{name:string, size:number, sha256:string}>}
 */
export async function verifyFile(manifest, name, bytes) {
  const entry = (manifest.files || {})[name];
  if (!entry) throw new BundleRefused(`${name} is not listed in the manifest`);
  if (bytes.length !== entry.size) {
    throw new BundleRefused(`${name} has ${bytes.length} bytes, the manifest says ${entry.size}`);
  }
  const digest = await sha256(bytes);
  if (digest !== entry.sha256) {
    throw new BundleRefused(`${name} differs from the signed manifest (sha256 ${digest.slice(0, 16)}…, expected ${entry.sha256.slice(0, 16)}…)`);
  }
  return { name, size: bytes.length, sha256: digest };
}

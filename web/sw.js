// Service worker of the demo page (scope /demo/): after one visit the page works offline.
//
// The page puts what it fetched into the cache named below once the bundle checked out (app.js,
// cacheForOffline). Here every GET under /demo/ goes to the network first and falls back to that cache when the
// network fails; bundle files (/demo/b/<id>/..., named by the bundle's manifest hash) and the versioned runtime
// (/demo/ort/<version>/...) never change, so they come from the cache first. Cached bundle files are checked
// against the signed manifest on every visit, exactly like downloaded ones.
const CACHE = new URL(location.href).searchParams.get("cache") || "edgekws-demo";
const SCOPE = new URL(self.registration.scope).pathname;

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

function immutable(path) {
  return path.startsWith(`${SCOPE}b/`) || path.startsWith(`${SCOPE}ort/`);
}

async function cacheFirst(request) {
  // nothing is stored here: only the page stores files, after they checked out against the signed manifest
  const hit = await (await caches.open(CACHE)).match(request);
  return hit || fetch(request);
}

async function networkFirst(request) {
  try {
    return await fetch(request);
  } catch (err) {
    const hit = await (await caches.open(CACHE)).match(request);
    if (hit) return hit;
    throw err;
  }
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== location.origin || !url.pathname.startsWith(SCOPE)) return;
  event.respondWith(immutable(url.pathname) ? cacheFirst(event.request) : networkFirst(event.request));
});

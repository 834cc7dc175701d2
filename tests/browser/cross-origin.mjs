// Helpers for the cross-origin browser test: the bell page as a third-party app embeds it, and a
// tiny static "app" server on its own port, i.e. its own origin.

import http from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

import { freePort, repoRoot } from './harness.mjs';

/**
 * The bell page (web/demo.html) as a third-party app would embed it: served by the app's own
 * origin, importing <notifyd-bell> (and through it the client) from notifyd's origin and talking
 * to notifyd cross-origin (its `server` attribute). Its
 * tokens come from the app's backend (`/demo/token` here, fetched server to server from notifyd's
 * dev endpoint, as a real app would mint them with the shared secret).
 */
export async function bellPage(notifydUrl) {
  const html = await readFile(path.join(repoRoot, 'web', 'demo.html'), 'utf8');
  const edits = [
    [`import '/client/notifyd-bell.js'`, `import '${notifydUrl}/client/notifyd-bell.js'`],
    ['<notifyd-bell id="nb">', `<notifyd-bell id="nb" server="${notifydUrl}">`],
  ];
  let out = html;
  for (const [from, to] of edits) {
    if (!out.includes(from)) throw new Error(`web/demo.html changed: ${from} not found`);
    out = out.replace(from, to);
  }
  return out;
}

/**
 * A static server on 127.0.0.1 and a port of its own: `/bell.html` (`app.page`), `/blank.html`
 * (an empty page) and `/demo/token` (proxied to `app.notifydUrl`, server side, so no CORS
 * involved). Started first, so notifyd can be told its origin; set `page` and `notifydUrl` then.
 */
export async function appServer() {
  const port = await freePort();
  const app = { origin: `http://127.0.0.1:${port}`, page: '', notifydUrl: '' };
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, `http://127.0.0.1:${port}`);
    try {
      if (url.pathname === '/bell.html' || url.pathname === '/blank.html') {
        res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
        res.end(url.pathname === '/bell.html' ? app.page : '<!doctype html><title>blank</title><p>blank</p>');
      } else if (url.pathname === '/demo/token') {
        const r = await fetch(`${app.notifydUrl}/demo/token${url.search}`, { signal: AbortSignal.timeout(10_000) });
        res.writeHead(r.status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
        res.end(await r.text());
      } else {
        res.writeHead(404, { 'Content-Type': 'text/plain' });
        res.end('not found');
      }
    } catch (e) {
      res.writeHead(502, { 'Content-Type': 'text/plain' });
      res.end(String(e));
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  app.close = () =>
    new Promise((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  return app;
}

// Helpers for the cross-origin browser test: a notifyd started with extra environment variables
// (harness.mjs's `Notifyd` clears NOTIFYD_ALLOWED_ORIGINS on purpose), and a tiny static "app"
// server on its own port, i.e. its own origin.

import { spawn } from 'node:child_process';
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

import { NOTIFYD_BIN, Notifyd, freePort, repoRoot, sleep } from './harness.mjs';

/** A `Notifyd` (`serve --dev`) whose process also gets `extraEnv`. */
export class NotifydWithEnv extends Notifyd {
  constructor(extraEnv) {
    super({ dev: true });
    this.extraEnv = extraEnv;
  }

  // Same as Notifyd.start, plus `extraEnv` (harness.mjs removes NOTIFYD_ALLOWED_ORIGINS from the
  // inherited environment, so it cannot be passed through process.env).
  async start() {
    if (this.proc) throw new Error('notifyd is already running');
    const env = {
      ...process.env,
      NOTIFYD_BIND: `127.0.0.1:${this.port}`,
      DATABASE_URL: `postgres://${process.env.PGUSER ?? 'postgres'}@${process.env.PGHOST ?? '127.0.0.1'}:${process.env.PGPORT ?? '5432'}/${this.db}`,
      REDIS_URL: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
      NOTIFYD_REDIS_PREFIX: this.redisPrefix,
      RUST_LOG: process.env.RUST_LOG ?? 'info,notifyd::http=warn',
    };
    delete env.NOTIFYD_JWT_SECRET;
    Object.assign(env, this.extraEnv);
    const proc = spawn(NOTIFYD_BIN, ['serve', '--dev'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    const keep = (chunk) => {
      this.logs.push(chunk.toString());
      if (this.logs.length > 2000) this.logs.splice(0, 1000);
    };
    proc.stdout.on('data', keep);
    proc.stderr.on('data', keep);
    this.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    this.exited.then(() => {
      if (this.proc === proc) this.proc = null;
    });
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (this.proc !== proc) throw new Error(`notifyd exited during start-up:\n${this.dumpLogs()}`);
      try {
        if ((await fetch(`${this.baseUrl}/readyz`)).ok) return;
      } catch {
        /* not listening yet */
      }
      if (Date.now() > deadline) throw new Error(`notifyd not ready after 60 s:\n${this.dumpLogs()}`);
      await sleep(100);
    }
  }
}

/**
 * The bell page (web/demo.html) as a third-party app would embed it: served by the app's own
 * origin, importing the client from notifyd's origin and talking to notifyd cross-origin. Its
 * tokens come from the app's backend (`/demo/token` here, fetched server to server from notifyd's
 * dev endpoint, as a real app would mint them with the shared secret).
 */
export async function bellPage(notifydUrl) {
  const html = await readFile(path.join(repoRoot, 'web', 'demo.html'), 'utf8');
  const edits = [
    [`from '/client/notifyd-client.js'`, `from '${notifydUrl}/client/notifyd-client.js'`],
    ['new NotifydClient({ getToken })', `new NotifydClient({ getToken, url: '${notifydUrl}' })`],
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

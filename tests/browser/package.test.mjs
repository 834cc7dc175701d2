// The installable package (web/package.json, contract §10 "Drop-in UI"): `npm pack` in web/,
// the tarball installed (offline: it has no dependencies) into a scratch project, a scratch page
// served from that project on its own origin importing both entry points through the installed
// package's `exports`, checked in Chromium against a live notifyd. The hand-written .d.ts files
// are type-checked with tsc from a TypeScript file in the scratch project. Run: scripts/browser-test.sh

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';

import { Notifyd, freePort, launchBrowser, randomUser, repoRoot } from './harness.mjs';

const run = promisify(execFile);
const here = path.join(repoRoot, 'tests', 'browser');

let tmp;
let project;
let tarball;
let site;
let server;
let browser;

const TYPES = { '.js': 'text/javascript; charset=utf-8', '.html': 'text/html; charset=utf-8', '.json': 'application/json' };

/** A static server of `root` on its own port (its own origin); `/token` mints a demo token. */
async function staticServer(root) {
  const port = await freePort();
  const srv = { origin: `http://127.0.0.1:${port}`, notifydUrl: '' };
  const httpServer = http.createServer(async (req, res) => {
    const url = new URL(req.url, srv.origin);
    try {
      if (url.pathname === '/token') {
        const r = await fetch(`${srv.notifydUrl}/demo/token${url.search}`, { signal: AbortSignal.timeout(10_000) });
        res.writeHead(r.status, { 'Content-Type': 'application/json' });
        res.end(await r.text());
        return;
      }
      const file = path.resolve(root, `.${decodeURIComponent(url.pathname)}`);
      if (!file.startsWith(root + path.sep)) throw new Error('outside');
      const body = await readFile(file);
      res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream', 'Cache-Control': 'no-store' });
      res.end(body);
    } catch {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found');
    }
  });
  await new Promise((resolve, reject) => {
    httpServer.once('error', reject);
    httpServer.listen(port, '127.0.0.1', resolve);
  });
  srv.close = () => new Promise((resolve) => {
    httpServer.close(() => resolve());
    httpServer.closeAllConnections();
  });
  return srv;
}

before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'notifyd-pack-'));
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', tmp], { cwd: path.join(repoRoot, 'web') });
  const [packed] = JSON.parse(stdout);
  tarball = { file: path.join(tmp, packed.filename), files: packed.files.map((f) => f.path).sort() };
  project = path.join(tmp, 'scratch');
  await run('mkdir', ['-p', project]);
  await writeFile(path.join(project, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }));
  await run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--loglevel=error', tarball.file], { cwd: project });
  site = await staticServer(project);
  server = await new Notifyd({ env: { NOTIFYD_ALLOWED_ORIGINS: site.origin } }).setup();
  site.notifydUrl = server.baseUrl;
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await site?.close();
  await server?.teardown();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('the npm package built from web/', { timeout: 180_000 }, () => {
  it('npm pack ships the client, the bell, their types and both workers, and nothing else', () => {
    assert.deepEqual(tarball.files, [
      'README.md',
      'notifyd-bell.d.ts',
      'notifyd-bell.js',
      'notifyd-client.d.ts',
      'notifyd-client.js',
      'notifyd-shared-worker.js',
      'notifyd-sw.js',
      'package.json',
    ]);
  });

  it('installed into a scratch project: a page imports both entry points through `exports`; NotifydClient is a class and <notifyd-bell> renders its badge against notifyd', { timeout: 90_000 }, async () => {
    const pkg = JSON.parse(await readFile(path.join(project, 'node_modules', 'notifyd-client', 'package.json'), 'utf8'));
    assert.equal(pkg.type, 'module');
    assert.deepEqual(pkg.dependencies ?? {}, {});
    // The import map is built from the installed package's own `exports`.
    const imports = {};
    for (const spec of ['.', './bell']) {
      const target = pkg.exports[spec].default;
      assert.ok(pkg.exports[spec].types, `${spec} has types`);
      imports[spec === '.' ? 'notifyd-client' : 'notifyd-client/bell'] = `/node_modules/notifyd-client/${target.replace(/^\.\//, '')}`;
    }
    await writeFile(path.join(project, 'index.html'), `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>scratch</title>
<script type="importmap">${JSON.stringify({ imports })}</script></head>
<body>
<notifyd-bell server="${server.baseUrl}"></notifyd-bell>
<script type="module">
  import { NotifydClient } from 'notifyd-client';
  import Bell, { NotifydBell } from 'notifyd-client/bell';
  window.result = {
    clientIsClass: typeof NotifydClient === 'function' && /^class\\b/.test(Function.prototype.toString.call(NotifydClient)),
    bellDefined: customElements.get('notifyd-bell') === NotifydBell && Bell === NotifydBell,
  };
  const bell = document.querySelector('notifyd-bell');
  window.result.bellIsElement = bell instanceof NotifydBell;
  bell.getToken = async () => (await (await fetch('/token?user=' + new URLSearchParams(location.search).get('user'))).json()).token;
  window.result.sameClientClass = bell.client instanceof NotifydClient;
</script>
</body></html>`);
    const user = randomUser('pkg');
    const page = await browser.context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${site.origin}/index.html?user=${user}`);
    await page.waitForFunction(() => window.result?.sameClientClass !== undefined, null, { timeout: 10_000 });
    assert.deepEqual(await page.evaluate(() => window.result), {
      clientIsClass: true, bellDefined: true, bellIsElement: true, sameClientClass: true,
    });
    await page.waitForSelector('notifyd-bell[state="open"]', { state: 'attached', timeout: 15_000 });
    await server.send({ to_user: user, title: 'from the package' });
    await server.send({ to_user: user, title: 'and another' });
    await page.waitForFunction(() => {
      const b = document.querySelector('notifyd-bell').shadowRoot.querySelector('[part="badge"]');
      return !b.hidden && b.textContent === '2';
    }, null, { timeout: 10_000 });
    assert.match(await page.getAttribute('notifyd-bell >> #bell', 'aria-label'), /\b2\b/);
    // everything the page loaded came from the scratch project (and the API from notifyd)
    const scripts = await page.evaluate(() => performance.getEntriesByType('resource').filter((e) => e.name.endsWith('.js')).map((e) => e.name));
    assert.deepEqual(scripts.sort(), [
      `${site.origin}/node_modules/notifyd-client/notifyd-bell.js`,
      `${site.origin}/node_modules/notifyd-client/notifyd-client.js`,
    ]);
    assert.deepEqual(errors, []);
    await page.close();
  });

  it('the TypeScript declarations type-check a program that uses both entry points', { timeout: 60_000 }, async () => {
    const tsc = path.join(here, 'node_modules', '.bin', 'tsc');
    await writeFile(path.join(project, 'check.ts'), `
import { NotifydClient, NotifydError, safeUrl, type NotifydMessage, type NotifydCounts } from 'notifyd-client';
import { NotifydBell } from 'notifyd-client/bell';

const client = new NotifydClient({ url: 'https://notifyd.example.com', getToken: async () => 'jwt' });
const off: () => void = client.on('message', ({ message, unseen }) => {
  const m: NotifydMessage = message;
  const n: number = unseen;
  console.log(m.title, n, safeUrl(m.skip_url));
});
off();
client.on('archived', ({ ids }) => ids.map((id: string) => id.length));
client.on('status', ({ state }) => (state === 'open' ? 1 : 0));
const counts: Promise<NotifydCounts> = client.archive(['a']);
void counts;
void client.fetchPage({ limit: 10, before: null }).then((p) => p.next_before);
void client.snooze(['a'], new Date());
const err = new NotifydError('busy', 'x');
console.log(err.code);

const bell = document.querySelector('notifyd-bell');
if (bell) {
  const b: NotifydBell = bell;
  b.getToken = () => Promise.resolve('jwt');
  b.addEventListener('notifyd-click', (e) => { if (e.detail.url) e.preventDefault(); });
  b.client?.markAllSeen();
}
const created = document.createElement('notifyd-bell');
created.setAttribute('server', 'https://notifyd.example.com');
// @ts-expect-error: ids are strings
void client.markRead([1]);
`);
    const args = ['--noEmit', '--strict', '--target', 'es2022', '--module', 'nodenext', '--moduleResolution', 'nodenext',
      '--lib', 'es2022,dom', '--skipLibCheck', 'false', 'check.ts'];
    try {
      await run(tsc, args, { cwd: project });
    } catch (e) {
      assert.fail(`tsc failed:\n${e.stdout}${e.stderr}`);
    }
  });
});

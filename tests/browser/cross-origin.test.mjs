// The bell page embedded by an app of another origin (contract §7): the page comes from a static
// server on one port, imports /client/notifyd-client.js from notifyd on another port and talks to
// it cross-origin: REST with Authorization (so the browser sends CORS preflights) and the
// WebSocket. A page from an origin not in NOTIFYD_ALLOWED_ORIGINS cannot use the REST API or even
// load the client. Run: scripts/browser-test.sh

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Notifyd, launchBrowser, randomUser } from './harness.mjs';
import { appServer, bellPage } from './cross-origin.mjs';

let server;
let app;
let other;
let browser;
const pageErrors = [];

before(async () => {
  app = await appServer();
  other = await appServer();
  server = await new Notifyd({ env: { NOTIFYD_ALLOWED_ORIGINS: app.origin } }).setup();
  app.notifydUrl = other.notifydUrl = server.baseUrl;
  app.page = other.page = await bellPage(server.baseUrl);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await app?.close();
  await other?.close();
  await server?.teardown();
});

async function openBellPage(origin, user) {
  const page = await browser.context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${user}: ${e.message}`));
  await page.goto(`${origin}/bell.html?user=${encodeURIComponent(user)}`);
  return page;
}

describe('the bell page on another origin than notifyd', { timeout: 180_000 }, () => {
  it('loads the client, lists over REST (preflighted), gets messages over the WebSocket, marks read over both', { timeout: 90_000 }, async () => {
    assert.notEqual(app.origin, server.baseUrl);
    const user = randomUser('xo');
    const page = await openBellPage(app.origin, user);
    assert.equal(new URL(page.url()).origin, app.origin);
    // `open` = the WebSocket's hello arrived; `loaded` = the first page came over REST.
    await page.waitForSelector('#status[data-state="open"]', { timeout: 15_000 });
    await page.waitForSelector('body[data-loaded="true"]', { timeout: 10_000 });

    // A message POSTed by a service arrives live over the WebSocket.
    const first = (await server.send({ to_user: user, title: 'cross-origin hello' })).messages[0].id;
    await page.waitForSelector(`#list .item[data-id="${first}"][data-unread="true"]`, { state: 'attached', timeout: 10_000 });

    // Mark read from the bell (over the socket while it is open).
    if ((await page.getAttribute('#bell', 'aria-expanded')) !== 'true') await page.click('#bell');
    await page.waitForSelector('#panel:not([hidden])');
    await page.locator(`#list .item[data-id="${first}"]`).click();
    await page.waitForSelector(`#list .item[data-id="${first}"][data-unread="false"]`, { state: 'attached', timeout: 10_000 });
    assert.equal(await server.sql(`SELECT is_read FROM t_message_real_time WHERE id = '${first}'`), 't');

    // REST writes from the page: a POST with a JSON body and a DELETE, both preflighted.
    const second = (await server.send({ to_user: user, title: 'read me over REST' })).messages[0].id;
    await page.waitForSelector(`#list .item[data-id="${second}"]`, { state: 'attached', timeout: 10_000 });
    const counts = await page.evaluate(async (id) => {
      const { client } = window.notifydDemo;
      client.close(); // no socket: markRead goes over REST
      return client.markRead([id]);
    }, second);
    assert.equal(counts.unread, 0);
    assert.equal(await server.sql(`SELECT is_read FROM t_message_real_time WHERE id = '${second}'`), 't');
    const listed = await page.evaluate(async (id) => {
      const { client } = window.notifydDemo;
      await client.deleteMessage(id);
      return (await client.fetchPage({ limit: 20 })).messages.map((m) => m.id);
    }, second);
    assert.deepEqual(listed, [first]);
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it('a page from an origin that is not allowed can neither load the client nor call the REST API', { timeout: 60_000 }, async () => {
    const user = randomUser('evil');
    const unread = (await server.send({ to_user: user, title: 'stays unread' })).messages[0].id;
    const token = (await (await fetch(`${server.baseUrl}/demo/token?user=${user}`)).json()).token;
    const page = await browser.context.newPage();
    await page.goto(`${other.origin}/blank.html`);
    const result = await page.evaluate(
      async ({ base, token }) => {
        const out = {};
        try {
          const r = await fetch(`${base}/api/v1/me/unread-count`, { headers: { Authorization: `Bearer ${token}` } });
          out.rest = `read ${r.status}`;
        } catch (e) {
          out.rest = `blocked: ${e.name}`;
        }
        try {
          const r = await fetch(`${base}/api/v1/me/messages/read-all`, {
            method: 'POST',
            headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
            body: '{}',
          });
          out.post = `read ${r.status}`;
        } catch (e) {
          out.post = `blocked: ${e.name}`;
        }
        try {
          await import(`${base}/client/notifyd-client.js`);
          out.module = 'loaded';
        } catch (e) {
          out.module = `blocked: ${e.name}`;
        }
        return out;
      },
      { base: server.baseUrl, token },
    );
    assert.deepEqual(result, { rest: 'blocked: TypeError', post: 'blocked: TypeError', module: 'blocked: TypeError' });
    // The refused preflight kept the POST from being sent: the message is still unread.
    assert.equal(await server.sql(`SELECT is_read FROM t_message_real_time WHERE id = '${unread}'`), 'f');
    await page.close();
  });
});

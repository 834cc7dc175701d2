// Unit tests of the token lifetime handling in web/notifyd-client.js (Node, fake WebSocket):
// the refresh is scheduled from the JWT's `exp`, sends `auth` with a token from getToken and is
// rescheduled on `ack`; a 4001 close or a refused refresh reconnects at once (no backoff) with a
// new token and resumes with `since`; `busy` answers are retried. The same against a real server
// in Chromium: token-browser.test.mjs.

import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { NotifydClient, NotifydError, refreshDelayMs, tokenExp } from '../../web/notifyd-client.js';
import { FakeWS, fakeJwt, tick, waitFor } from './fake-ws.mjs';

const nowSec = () => Math.floor(Date.now() / 1000);

const clients = [];
/**
 * A client whose getToken hands out `fakeJwt`s: the n-th call (from 0) expires `ttl(n)` seconds
 * from now (default 2 s, later ones always later than earlier ones).
 */
function make({ ttl = () => 2, ...opts } = {}) {
  const tokens = [];
  const c = new NotifydClient({
    url: 'http://notifyd.test/',
    getToken: async () => {
      const n = tokens.length;
      const t = fakeJwt({ sub: '42', exp: nowSec() + ttl(n) + n, n });
      tokens.push(t);
      return t;
    },
    WebSocket: FakeWS,
    fetch: async () => new Response('{}'),
    backoffBaseMs: 60_000,
    backoffMaxMs: 60_000,
    ...opts,
  });
  const seen = [];
  for (const t of ['status', 'token', 'error', 'message']) c.on(t, (d) => seen.push([t, d]));
  clients.push(c);
  return { c, tokens, of: (t) => seen.filter(([k]) => k === t).map(([, d]) => d) };
}

async function hello(ws, seq = 0) {
  await waitFor(() => ws.readyState === 1 && ws.onmessage, 3000, 'socket open');
  ws.push({ type: 'hello', user: '42', seq, unread: 0, unseen: 0, heartbeat_s: 25 });
}

async function connected(c, seq = 0) {
  c.connect();
  await waitFor(() => FakeWS.last(), 3000, 'first socket');
  const ws = FakeWS.last();
  await hello(ws, seq);
  return ws;
}

const created = (seq) => ({
  type: 'message.created', seq, unread: seq, unseen: seq,
  message: { id: `m${seq}`, seq, title: `t${seq}`, content: '', type: 'system', send_user: null, send_time: new Date().toISOString(), skip_url: null, is_read: false, read_at: null },
});

/** Makes the backoff delay its maximum (so an attempt within seconds proves it skipped it). */
function maxJitter() {
  const real = Math.random;
  Math.random = () => 0.999;
  return () => {
    Math.random = real;
  };
}

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  FakeWS.all = [];
});

describe('tokenExp', () => {
  it('reads exp from a base64url payload without verifying', () => {
    // A sub with characters that need '-' and '_' in base64url and multi-byte UTF-8.
    const t = fakeJwt({ sub: 'üser?>>~~', exp: 1_900_000_000 });
    assert.match(t.split('.')[1], /[-_]/, 'the payload exercises base64url characters');
    assert.equal(tokenExp(t), 1_900_000_000);
  });
  it('is null for opaque tokens, garbage and tokens without a numeric exp', () => {
    for (const bad of ['opaque', 'a.b', 'a..c', 'x.!!!.y', fakeJwt({ sub: '1' }), fakeJwt({ exp: '17' }), null, 42]) {
      assert.equal(tokenExp(bad), null, String(bad));
    }
  });
});

describe('refreshDelayMs', () => {
  const now = 1_000_000_000_000;
  const at = (secs) => now / 1000 + secs;
  it('80% of the remaining lifetime, but at least 30 s before exp', () => {
    assert.equal(refreshDelayMs(at(3600), now, 0), 2_880_000);
    assert.equal(refreshDelayMs(at(100), now, 0), 70_000);
    assert.equal(refreshDelayMs(at(60), now, 0), 30_000);
  });
  it('tokens too short for that are refreshed half way; never sooner than 500 ms', () => {
    assert.equal(refreshDelayMs(at(40), now, 0), 20_000);
    assert.equal(refreshDelayMs(at(3), now, 0), 1_500);
    assert.equal(refreshDelayMs(at(0.2), now, 0), 500);
  });
  it('jitter only makes it up to 10% earlier', () => {
    assert.equal(refreshDelayMs(at(3600), now, 0.999999), Math.floor(2_880_000 * (1 - 0.0999999)));
  });
  it('null when exp has passed', () => {
    assert.equal(refreshDelayMs(at(0), now, 0), null);
    assert.equal(refreshDelayMs(at(-5), now, 0), null);
    assert.equal(refreshDelayMs(NaN, now, 0), null);
  });
});

describe('NotifydClient token lifetime', () => {
  it('schedules the refresh from the exp of the token the socket was opened with', async () => {
    const { c, of } = make({ ttl: () => 3600 });
    const before = Date.now();
    const ws = await connected(c);
    const exp = tokenExp(ws.token);
    assert.deepEqual(of('token'), [{ exp, source: 'connect' }]);
    const lo = before + refreshDelayMs(exp, before, 0.999999) - 5;
    const hi = Date.now() + refreshDelayMs(exp, Date.now(), 0) + 5;
    assert.ok(c._refreshAt >= lo && c._refreshAt <= hi, `refresh at ${c._refreshAt - before} ms, expected ${lo - before}..${hi - before}`);
    await tick(30);
    assert.equal(ws.sentOf('auth').length, 0, 'no refresh long before exp');
  });

  it('sends auth with a fresh token before exp; on ack it reschedules from the new exp', async () => {
    const { c, tokens, of } = make();
    const ws = await connected(c);
    assert.equal(ws.token, tokens[0]);
    await waitFor(() => ws.sentOf('auth').length === 1, 5000, 'first auth');
    const [auth] = ws.sentOf('auth');
    assert.equal(auth.token, tokens[1], 'a token fresh from getToken');
    assert.equal(typeof auth.ref, 'string');
    assert.ok(Date.now() < tokenExp(tokens[0]) * 1000, 'sent before the old exp');
    ws.push({ type: 'ack', ref: auth.ref, exp: tokenExp(tokens[1]) });
    await waitFor(() => of('token').length === 2, 1000, 'token event');
    assert.deepEqual(of('token')[1], { exp: tokenExp(tokens[1]), source: 'refresh' });
    // rescheduled: a second refresh follows on the same socket
    await waitFor(() => ws.sentOf('auth').length === 2, 6000, 'second auth');
    assert.equal(ws.sentOf('auth')[1].token, tokens[2]);
    assert.equal(FakeWS.all.length, 1, 'no reconnect');
    assert.equal(c.state, 'open');
  });

  it('a 4001 close reconnects at once (no backoff) with a new token and resumes with since', async () => {
    const restore = maxJitter();
    try {
      const { c, tokens, of } = make({ ttl: () => 3600 });
      const ws = await connected(c, 5);
      ws.push(created(6));
      ws.push(created(7));
      ws.serverClose(4001, 'token expired');
      assert.deepEqual(of('status').at(-1), { state: 'closed', reason: 'token expired', code: 4001, attempt: 0, retryInMs: 0 });
      await waitFor(() => FakeWS.all.length === 2, 3000, 'reconnect (the backoff would be ~60 s)');
      const ws2 = FakeWS.last();
      assert.equal(ws2.since, '7');
      assert.equal(ws2.token, tokens[1], 'a new token from getToken');
      await hello(ws2, 8);
      ws2.push({ type: 'sync', seq: 8, unread: 8, unseen: 8, events: [created(8)] });
      assert.deepEqual(of('message').map((m) => m.message.id), ['m6', 'm7', 'm8']);
      // A second 4001 within a second of the first: the backoff applies (no spinning).
      ws2.serverClose(4001, 'token expired');
      assert.ok(of('status').at(-1).retryInMs > 50_000, JSON.stringify(of('status').at(-1)));
    } finally {
      restore();
    }
  });

  it('a refused handshake (closed before hello, as a 401/429 looks to a browser) waits for the backoff', async () => {
    const restore = maxJitter();
    try {
      const { c, of } = make({ backoffBaseMs: 1000, backoffMaxMs: 1000 });
      c.connect();
      await waitFor(() => FakeWS.last()?.onclose, 3000, 'socket');
      FakeWS.last().serverClose(1006);
      assert.equal(of('status').at(-1).retryInMs, 999);
      c.reconnect(); // skip the wait
      await waitFor(() => FakeWS.all.length === 2 && FakeWS.last().onclose, 3000, 'second attempt');
      // even a 4001 before hello is no reason to skip the backoff
      FakeWS.last().serverClose(4001);
      assert.equal(of('status').at(-1).retryInMs, 999);
    } finally {
      restore();
    }
  });

  it('a refresh refused by the server reconnects at once with a fresh token', async () => {
    const restore = maxJitter();
    try {
      const { c, tokens } = make();
      const ws = await connected(c, 3);
      await waitFor(() => ws.sentOf('auth').length === 1, 5000, 'auth');
      ws.push({ type: 'error', ref: ws.sentOf('auth')[0].ref, error: { code: 'unauthorized', message: 'token for another user' } });
      await waitFor(() => FakeWS.all.length === 2, 3000, 'reconnect (the backoff would be ~60 s)');
      assert.equal(ws.closedWith.code, 4004);
      assert.equal(FakeWS.last().token, tokens[2]);
      assert.equal(FakeWS.last().since, '3');
    } finally {
      restore();
    }
  });

  it('a getToken that returns the same (cached) token sends no auth', async () => {
    const t = fakeJwt({ sub: '42', exp: nowSec() + 2 });
    let calls = 0;
    const { c } = make({
      getToken: () => {
        calls += 1;
        return t;
      },
    });
    const ws = await connected(c);
    await waitFor(() => calls >= 2, 5000, 'the refresh asked getToken');
    await tick(20);
    assert.equal(ws.sentOf('auth').length, 0);
  });

  it('refreshToken: false sends no auth', async () => {
    const { c, tokens } = make({ refreshToken: false });
    const ws = await connected(c);
    await tick(2500); // past the 2 s token's refresh point (and its exp)
    assert.equal(ws.sentOf('auth').length, 0);
    assert.equal(tokens.length, 1);
  });

  it('a token valid for 40 days does not overflow the timer (no refresh at once)', async () => {
    const { c } = make({ ttl: () => 40 * 86400 });
    const ws = await connected(c);
    const timer = c._refreshTimer;
    assert.ok(timer !== null);
    await tick(50);
    assert.equal(ws.sentOf('auth').length, 0);
    assert.equal(c._refreshTimer, timer, 'the same timer still armed (not firing and re-arming)');
  });

  it('busy answers are retried, then the promise rejects with code busy', async () => {
    const { c } = make({ ttl: () => 3600, busyRetries: 2, busyRetryMs: 5 });
    const ws = await connected(c);
    const answered = new Set();
    const busyAll = () => {
      for (const f of ws.sentOf('read_all')) {
        if (answered.has(f.ref)) continue;
        answered.add(f.ref);
        ws.push({ type: 'error', ref: f.ref, error: { code: 'busy', message: 'too many commands in flight' } });
      }
    };
    const p = c.markAllRead();
    for (let i = 0; i < 3; i++) {
      await waitFor(() => ws.sentOf('read_all').length === i + 1, 3000, `send ${i + 1}`);
      busyAll();
    }
    await assert.rejects(p, (e) => e instanceof NotifydError && e.code === 'busy');
    assert.equal(ws.sentOf('read_all').length, 3, '1 send + 2 retries');
    assert.equal(new Set(ws.sentOf('read_all').map((f) => f.ref)).size, 3, 'each with its own ref');

    // one busy, then an ack: resolves
    const q = c.markAllSeen();
    await waitFor(() => ws.sentOf('seen_all').length === 1, 3000, 'seen_all');
    ws.push({ type: 'error', ref: ws.sentOf('seen_all')[0].ref, error: { code: 'busy', message: '' } });
    await waitFor(() => ws.sentOf('seen_all').length === 2, 3000, 'seen_all retry');
    ws.push({ type: 'ack', ref: ws.sentOf('seen_all')[1].ref, seq: 1, unread: 0, unseen: 0 });
    assert.deepEqual(await q, { seq: 1, unread: 0, unseen: 0 });
  });
});

// Unit tests of the transport choice in web/notifyd-client.js, in Node with a scripted fake
// WebSocket and EventSource (the test plays the server): when `auto` falls back to SSE, what it
// remembers and for how long, and what travels over an event stream. (The real thing in Chromium
// against a real server is transport.test.mjs.)

import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { NotifydClient, transportKey } from '../../web/notifyd-client.js';

import { FakeWS, waitFor } from './fake-ws.mjs';

/** An EventSource the test plays the server of. */
class FakeES {
  static all = [];
  constructor(url) {
    this.url = new URL(url);
    this.listeners = new Map();
    this.closed = false;
    FakeES.all.push(this);
  }
  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(fn);
  }
  close() {
    this.closed = true;
  }
  // --- the test's side
  emit(frame) {
    for (const fn of this.listeners.get(frame.type) ?? []) fn({ data: JSON.stringify(frame) });
  }
  fail() {
    for (const fn of this.listeners.get('error') ?? []) fn({});
  }
  static last() {
    return FakeES.all[FakeES.all.length - 1];
  }
}

/** localStorage's interface over a Map. */
function memoryStorage() {
  const m = new Map();
  return { map: m, getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, String(v)), removeItem: (k) => m.delete(k) };
}

const rest = [];
async function fakeFetch(url, init) {
  rest.push({ url, method: init.method, headers: init.headers, body: init.body });
  if (url.endsWith('/api/v1/me/tickets')) return new Response(JSON.stringify({ ticket: `tk${rest.length}`, expires_at: 0 }), { status: 201 });
  if (init.method === 'HEAD') return new Response(null, { status: url.includes('secret') ? 403 : 200 });
  if (url.endsWith('/me/send')) return new Response(JSON.stringify({ id: 'd1' }), { status: 201 });
  return new Response(JSON.stringify({ seq: 4, unread: 0, unseen: 0 }), { status: 200 });
}

const clients = [];
function make(opts = {}) {
  const c = new NotifydClient({
    url: 'http://notifyd.test/',
    getToken: async () => 'tok',
    WebSocket: FakeWS,
    EventSource: FakeES,
    fetch: fakeFetch,
    backoffBaseMs: 20,
    backoffMaxMs: 100,
    ...opts,
  });
  const seen = [];
  for (const t of ['message', 'status', 'reset', 'counts', 'topic']) c.on(t, (d) => seen.push([t, d]));
  clients.push(c);
  return { c, of: (t) => seen.filter(([k]) => k === t).map(([, d]) => d) };
}

const hello = { type: 'hello', user: '42', seq: 0, epoch: 0, unread: 0, unseen: 0, heartbeat_s: 25 };
const created = (seq) => ({
  type: 'message.created', seq, unread: seq, unseen: seq,
  message: { id: `m${seq}`, seq, title: `t${seq}`, content: '', type: 'system', send_user: null, send_time: '', skip_url: null, is_read: false, read_at: null },
});

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  FakeWS.all = [];
  FakeES.all = [];
  rest.length = 0;
});

describe("transport: 'auto'", () => {
  it('two WebSocket attempts closed before hello: the next is SSE, remembered at its hello for 24 h', async () => {
    const storage = memoryStorage();
    const { c } = make({ storage });
    c.connect();
    for (let i = 1; i <= 2; i++) {
      await waitFor(() => FakeWS.all.length === i && FakeWS.last().onclose);
      FakeWS.last().serverClose(1006);
    }
    await waitFor(() => FakeES.all.length === 1);
    assert.equal(FakeWS.all.length, 2);
    const es = FakeES.last();
    assert.equal(es.url.pathname, '/sse');
    assert.match(es.url.searchParams.get('ticket'), /^tk/);
    assert.equal(es.url.searchParams.get('token'), null, 'no JWT in an SSE URL');
    assert.equal(storage.map.size, 0, 'remembered only once SSE worked');
    es.emit(hello);
    assert.equal(c.state, 'open');
    assert.equal(c.transport, 'sse');
    const v = JSON.parse(storage.getItem(transportKey('http://notifyd.test')));
    assert.equal(v.transport, 'sse');
    assert.ok(Math.abs(v.until - (Date.now() + 24 * 3600_000)) < 5_000);
  });

  it('a WebSocket reached hello once: later drops never fall back', async () => {
    const { c } = make({ storage: memoryStorage() });
    c.connect();
    await waitFor(() => FakeWS.last()?.onmessage);
    FakeWS.last().push(hello);
    for (let i = 0; i < 3; i++) {
      const n = FakeWS.all.length;
      FakeWS.last().serverClose(1006);
      await waitFor(() => FakeWS.all.length === n + 1 && FakeWS.last().onclose);
    }
    assert.equal(FakeES.all.length, 0);
  });

  it('no hello within 5 s on the first WebSocket: SSE', async () => {
    const { c } = make({ storage: memoryStorage(), connectTimeoutMs: 10_000 });
    const t0 = Date.now();
    c.connect();
    await waitFor(() => FakeES.all.length === 1, 8_000);
    const took = Date.now() - t0;
    assert.ok(took >= 4_900 && took < 6_500, `fell back after ${took} ms`);
    assert.equal(FakeWS.all.length, 1);
    assert.equal(FakeWS.all[0].closedWith.code, 4002);
  });

  it('a remembered choice goes to SSE at once; an expired one tries /ws again', async () => {
    const storage = memoryStorage();
    const key = transportKey('http://notifyd.test');
    storage.setItem(key, JSON.stringify({ transport: 'sse', until: Date.now() + 60_000 }));
    const a = make({ storage });
    a.c.connect();
    await waitFor(() => FakeES.all.length === 1);
    assert.equal(FakeWS.all.length, 0);
    a.c.close();
    storage.setItem(key, JSON.stringify({ transport: 'sse', until: Date.now() - 1 }));
    const b = make({ storage });
    b.c.connect();
    await waitFor(() => FakeWS.all.length === 1);
    assert.equal(FakeES.all.length, 1);
  });

  it("transport: 'ws' never falls back; 'sse' never tries /ws", async () => {
    const w = make({ transport: 'ws', storage: memoryStorage() });
    w.c.connect();
    for (let i = 1; i <= 3; i++) {
      await waitFor(() => FakeWS.all.length === i && FakeWS.last().onclose);
      FakeWS.last().serverClose(1006);
    }
    assert.equal(FakeES.all.length, 0);
    w.c.close();
    const s = make({ transport: 'sse', storage: memoryStorage() });
    s.c.connect();
    await waitFor(() => FakeES.all.length === 1);
    assert.equal(FakeWS.all.length, 3);
  });
});

describe('over SSE', () => {
  async function sseOpen(opts = {}) {
    const m = make({ transport: 'sse', storage: null, ...opts });
    m.c.connect();
    await waitFor(() => FakeES.last()?.listeners.size > 0);
    FakeES.last().emit(hello);
    return m;
  }

  it('resumes with since and epoch after a lost stream, with a fresh ticket', async () => {
    const { c, of } = await sseOpen();
    const es = FakeES.last();
    es.emit(created(1));
    es.emit(created(2));
    es.fail();
    assert.ok(es.closed, 'the EventSource does not reconnect on its own');
    await waitFor(() => FakeES.all.length === 2);
    const es2 = FakeES.last();
    assert.equal(es2.url.searchParams.get('since'), '2');
    assert.notEqual(es2.url.searchParams.get('ticket'), es.url.searchParams.get('ticket'));
    es2.emit({ ...hello, seq: 3 });
    es2.emit({ type: 'sync', seq: 3, events: [created(2), created(3)] });
    assert.deepEqual(of('message').map((m) => m.seq), [1, 2, 3]);
    assert.equal(c.seq, 3);
  });

  it('token_expired: reconnects at once (no backoff)', async () => {
    await sseOpen({ backoffBaseMs: 60_000, backoffMaxMs: 60_000 });
    FakeES.last().emit({ type: 'error', error: { code: 'token_expired', message: 'token expired' } });
    await waitFor(() => FakeES.all.length === 2, 1_000);
  });

  it('commands go over REST; subscribe checks with HEAD and reopens the stream with the topics', async () => {
    const { c } = await sseOpen();
    const counts = await c.markAllRead();
    assert.equal(counts.seq, 4);
    assert.ok(rest.some((r) => r.url.endsWith('/api/v1/me/messages/read-all') && r.method === 'POST'));
    const sent = await c.send('7', { title: 'hi' }, { key: 'k1' });
    assert.equal(sent.id, 'd1');
    assert.equal(rest.find((r) => r.url.endsWith('/me/send')).headers['Idempotency-Key'], 'k1');

    const sub = c.subscribe(['product:1']);
    await waitFor(() => FakeES.all.length === 2);
    assert.equal(FakeES.last().url.searchParams.get('topics'), 'product:1');
    assert.equal(FakeES.last().url.searchParams.get('since'), '0');
    FakeES.last().emit(hello);
    assert.deepEqual(await sub, { topics: ['product:1'] });
    assert.ok(FakeES.all[0].closed);

    await assert.rejects(c.subscribe(['secret:1']), (e) => e.code === 'forbidden');
    assert.equal(FakeES.all.length, 2, 'a refused topic changes nothing');
    await assert.rejects(c.publish('group:1', {}), (e) => e.code === 'unsupported');
  });
});

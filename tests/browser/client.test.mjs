// Unit tests of web/notifyd-client.js in Node with a scripted fake WebSocket: seq bookkeeping,
// resume, duplicates, gaps, backoff, commands and heartbeats. (The real thing against a real
// server is bell.test.mjs.)

import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { NotifydClient, NotifydError, safeUrl, retryAfterMs } from '../../web/notifyd-client.js';

import { FakeWS, tick } from './fake-ws.mjs';

const rest = [];
let failNext = false;
async function fakeFetch(url, init) {
  rest.push({ url, method: init.method, auth: init.headers.Authorization });
  if (failNext) {
    failNext = false;
    return new Response(JSON.stringify({ error: { code: 'validation_failed', message: 'bad', field: 'limit' } }), { status: 422 });
  }
  return new Response(JSON.stringify({ seq: 4, unread: 0, unseen: 0 }), { status: 200 });
}

const clients = [];
function make(opts = {}) {
  const c = new NotifydClient({
    url: 'http://notifyd.test/',
    getToken: async () => 'tok',
    WebSocket: FakeWS,
    fetch: fakeFetch,
    backoffBaseMs: 20,
    backoffMaxMs: 200,
    ...opts,
  });
  const seen = [];
  for (const t of ['message', 'read', 'seen', 'deleted', 'unread', 'archived', 'unarchived', 'snoozed', 'unsnoozed', 'counts', 'reset', 'status', 'topic', 'error']) {
    c.on(t, (d) => seen.push([t, d]));
  }
  clients.push(c);
  return { c, seen, of: (t) => seen.filter(([k]) => k === t).map(([, d]) => d) };
}

async function connected(c, hello = {}) {
  c.connect();
  await waitFor(() => FakeWS.last()?.readyState === 1 && FakeWS.last().onmessage);
  const ws = FakeWS.last();
  ws.push({ type: 'hello', user: '42', seq: 0, unread: 0, unseen: 0, heartbeat_s: 25, ...hello });
  return ws;
}

async function waitFor(pred, ms = 3000) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await tick(2);
  }
}

const created = (seq, id = `m${seq}`) => ({
  type: 'message.created', seq, unread: seq, unseen: seq,
  message: { id, seq, title: `t${seq}`, content: '', type: 'system', send_user: null, send_time: new Date().toISOString(), skip_url: null, is_read: false, read_at: null },
});

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  FakeWS.all = [];
});

describe('safeUrl', () => {
  const base = 'https://app.example/inbox';
  it('allows relative and http(s) URLs', () => {
    assert.equal(safeUrl('/posts/9#c3', base), 'https://app.example/posts/9#c3');
    assert.equal(safeUrl('posts/9', base), 'https://app.example/posts/9');
    assert.equal(safeUrl('?tab=2', base), 'https://app.example/inbox?tab=2');
    assert.equal(safeUrl('https://other.example/x', base), 'https://other.example/x');
    assert.equal(safeUrl('HTTP://other.example/x', base), 'http://other.example/x');
  });
  it('refuses every other scheme and protocol-relative URLs', () => {
    for (const bad of ['javascript:alert(1)', 'JavaScript:alert(1)', ' javascript:alert(1)', 'java\tscript:alert(1)',
      'data:text/html,<script>1</script>', 'vbscript:x', '//evil.example/x', '\\\\evil.example', '/\\evil.example',
      'file:///etc/passwd', '', null, undefined, 42]) {
      assert.equal(safeUrl(bad, base), null, String(bad));
    }
  });
});

describe('NotifydClient', () => {
  it('first hello without since = reset(initial); live events apply in order, duplicates are ignored', async () => {
    const { c, of } = make();
    const ws = await connected(c, { seq: 5, unread: 2, unseen: 1 });
    assert.equal(ws.since, null);
    assert.equal(ws.url.searchParams.get('token'), 'tok');
    assert.equal(ws.url.protocol, 'ws:');
    assert.deepEqual(of('reset'), [{ reason: 'initial', seq: 5, unread: 2, unseen: 1 }]);
    assert.equal(c.seq, 5);
    ws.push(created(6));
    ws.push(created(6)); // duplicate
    ws.push(created(4)); // old
    ws.push({ type: 'message.read', seq: 7, unread: 1, unseen: 1, ids: ['m6'] });
    ws.push({ type: 'message.seen_all', seq: 8, unread: 1, unseen: 0 });
    ws.push({ type: 'message.read_all', seq: 9, unread: 0, unseen: 0 });
    ws.push({ type: 'message.deleted', seq: 10, unread: 0, unseen: 0, ids: ['m6'] });
    ws.push({ type: 'topic.event', topic: 'product:1', data: { stock: 3 } });
    // Topic events with ids: a repeated id (at-least-once delivery) is dropped, per topic.
    const ev = { type: 'topic.event', topic: 'group:7', id: 'e1', from: 'ann', data: { text: 'hi' } };
    ws.push(ev);
    ws.push(ev);
    ws.push({ ...ev, retained: true });
    ws.push({ ...ev, topic: 'group:8' });
    assert.deepEqual(of('message').map((d) => d.message.id), ['m6']);
    assert.deepEqual(of('read').map((d) => [d.ids, d.all]), [[['m6'], false], [null, true]]);
    assert.equal(of('seen').length, 1);
    assert.deepEqual(of('deleted')[0].ids, ['m6']);
    assert.deepEqual(of('topic'), [
      { topic: 'product:1', id: null, data: { stock: 3 }, from: null, retained: false },
      { topic: 'group:7', id: 'e1', data: { text: 'hi' }, from: 'ann', retained: false },
      { topic: 'group:8', id: 'e1', data: { text: 'hi' }, from: 'ann', retained: false },
    ]);
    assert.equal(c.seq, 10);
    assert.deepEqual(c.counts, { seq: 10, unread: 0, unseen: 0 });
  });

  it('resumes with since after a drop; sync events apply in order without duplicates; 1012 and 4008 reconnect', async () => {
    const { c, of } = make();
    let ws = await connected(c, { seq: 3 });
    ws.push(created(4));
    for (const code of [1012, 4008, 1006]) {
      ws.serverClose(code);
      assert.equal(c.state, 'closed');
      await waitFor(() => FakeWS.all.length > 1 && FakeWS.last() !== ws && FakeWS.last().readyState === 1);
      ws = FakeWS.last();
      assert.equal(ws.since, String(c.seq));
    }
    assert.equal(ws.since, '4');
    ws.push({ type: 'hello', user: '42', seq: 6, unread: 3, unseen: 3, heartbeat_s: 25 });
    ws.push({ type: 'sync', seq: 6, unread: 3, unseen: 3, events: [created(4), created(5), created(6)] });
    ws.push(created(6)); // the live copy of the last synced event
    ws.push(created(7));
    assert.deepEqual(of('message').map((d) => [d.message.id, d.replayed]), [['m4', false], ['m5', true], ['m6', true], ['m7', false]]);
    assert.equal(of('reset').length, 1, 'only the initial reset');
  });

  it('sync reset emits reset(server) and adopts the server seq', async () => {
    const { c, of } = make({ since: 50 });
    const ws = await connected(c, { seq: 10 });
    assert.equal(ws.since, '50');
    ws.push({ type: 'sync', reset: true, seq: 10, unread: 1, unseen: 1 });
    assert.deepEqual(of('reset'), [{ reason: 'server', seq: 10, unread: 1, unseen: 1 }]);
    assert.equal(c.seq, 10);
    ws.push(created(11));
    assert.equal(of('message').length, 1);
  });

  it('a hole in seq drops the connection and resumes from the last applied seq', async () => {
    const { c, of } = make();
    const ws = await connected(c, { seq: 1 });
    ws.push(created(3));
    assert.equal(of('message').length, 0);
    assert.equal(ws.closedWith.code, 4003); // the client's own code (4001 is the server's token expired)
    await waitFor(() => FakeWS.last() !== ws);
    assert.equal(FakeWS.last().since, '1');
  });

  it('backoff: full jitter within the capped exponential bound, reset after hello', async () => {
    const { c, of } = make({ backoffBaseMs: 100, backoffMaxMs: 400 });
    const realRandom = Math.random;
    Math.random = () => 0.999;
    try {
      c.connect();
      await waitFor(() => FakeWS.all.length === 1);
      const delays = [];
      for (let i = 0; i < 5; i++) {
        const ws = FakeWS.last();
        await waitFor(() => ws.onclose);
        ws.serverClose(1006); // refused before hello
        delays.push(of('status').at(-1).retryInMs);
        // skip the wait
        c._retryNow('test');
        await waitFor(() => FakeWS.last() !== ws);
        // _retryNow resets the attempt counter like an 'online' event does; undo for this test
        c._attempt = i + 1;
      }
      assert.deepEqual(delays, [99, 199, 399, 399, 399]);
      const ws = FakeWS.last();
      await waitFor(() => ws.onmessage && ws.readyState === 1);
      ws.push({ type: 'hello', user: '42', seq: 0, unread: 0, unseen: 0, heartbeat_s: 25 });
      ws.serverClose(1006);
      assert.equal(of('status').at(-1).retryInMs, 99, 'reset after hello');
    } finally {
      Math.random = realRandom;
    }
  });

  it('a 1013 close with retry_after waits what the server named, not the backoff', async () => {
    const { c, of } = make({ backoffBaseMs: 100, backoffMaxMs: 400 });
    c.connect();
    await waitFor(() => FakeWS.all.length === 1);
    const ws = FakeWS.last();
    await waitFor(() => ws.onclose);
    ws.serverClose(1013, 'server busy: retry_after=2750');
    assert.equal(of('status').at(-1).retryInMs, 2750);
    assert.equal(retryAfterMs(1013, 'retry_after=999999'), 60000, 'capped');
    assert.equal(retryAfterMs(1013, 'server busy: retry'), undefined, 'no value: backoff');
    assert.equal(retryAfterMs(1006, 'retry_after=10'), undefined, 'only on 1013');
  });

  it('an online event retries at once', async () => {
    const target = new EventTarget();
    const saved = globalThis.addEventListener;
    globalThis.addEventListener = target.addEventListener.bind(target);
    globalThis.removeEventListener = target.removeEventListener.bind(target);
    try {
      const { c } = make({ backoffBaseMs: 60_000, backoffMaxMs: 60_000 });
      const ws = await connected(c);
      const realRandom = Math.random;
      Math.random = () => 0.99;
      ws.serverClose(1006);
      Math.random = realRandom;
      await tick(20);
      assert.equal(FakeWS.all.length, 1, 'waiting for the backoff');
      target.dispatchEvent(new Event('online'));
      await waitFor(() => FakeWS.all.length === 2);
    } finally {
      globalThis.addEventListener = saved;
      delete globalThis.removeEventListener;
    }
  });

  it('commands resolve by ack ref, reject by error frame, and fall back to REST on disconnect', async () => {
    const { c } = make();
    const ws = await connected(c, { seq: 2, unread: 2, unseen: 2 });
    const read = c.markRead(['a', 'b']);
    const sub = c.subscribe(['group:7']);
    await tick(5);
    const [r1, r2] = ws.sent.filter((f) => f.type !== 'ping');
    assert.deepEqual({ ...r1, ref: undefined }, { type: 'read', ids: ['a', 'b'], ref: undefined });
    assert.equal(r2.type, 'subscribe');
    ws.push({ type: 'error', ref: r2.ref, error: { code: 'forbidden', message: 'no' } });
    ws.push({ type: 'ack', ref: r1.ref, seq: 3, unread: 0, unseen: 0 });
    assert.deepEqual(await read, { seq: 3, unread: 0, unseen: 0 });
    await assert.rejects(sub, (e) => e instanceof NotifydError && e.code === 'forbidden');
    const pending = c.markAllSeen();
    await tick(5);
    ws.serverClose(1012);
    // the socket dropped before the ack: retried over REST (the command is idempotent)
    assert.deepEqual(await pending, { seq: 4, unread: 0, unseen: 0 });
    assert.deepEqual(rest.at(-1), { url: 'http://notifyd.test/api/v1/me/messages/seen-all', method: 'POST', auth: 'Bearer tok' });
  });

  it('inbox states: their events are seqs of the stream (no gap, no reconnect) and emit by name; commands go over the socket', async () => {
    const { c, of } = make();
    const ws = await connected(c, { seq: 2, unread: 2, unseen: 2 });
    ws.push({ type: 'message.archived', seq: 3, unread: 1, unseen: 1, ids: ['a'] });
    ws.push({ type: 'message.snoozed', seq: 4, unread: 0, unseen: 0, ids: ['b'], until: '2026-12-24T08:00:00Z' });
    ws.push({ type: 'message.unarchived', seq: 5, unread: 1, unseen: 1, ids: ['a'] });
    ws.push({ type: 'message.unsnoozed', seq: 6, unread: 2, unseen: 2, ids: ['b'] });
    ws.push({ type: 'message.read', seq: 7, unread: 1, unseen: 1, ids: ['a'] });
    ws.push({ type: 'message.unread', seq: 8, unread: 2, unseen: 2, ids: ['a'] });
    assert.equal(c.seq, 8);
    assert.equal(FakeWS.all.length, 1, 'no reconnect');
    assert.deepEqual(of('archived').map((d) => d.ids), [['a']]);
    assert.deepEqual(of('snoozed').map((d) => [d.ids, d.until]), [[['b'], '2026-12-24T08:00:00Z']]);
    assert.deepEqual(of('unarchived').map((d) => d.seq), [5]);
    assert.deepEqual(of('unsnoozed').map((d) => d.seq), [6]);
    assert.deepEqual(of('unread').map((d) => d.ids), [['a']]);
    assert.deepEqual(c.counts, { seq: 8, unread: 2, unseen: 2 });
    const archive = c.archive(['a']);
    const snooze = c.snooze(['b'], new Date('2026-12-24T08:00:00Z'));
    await tick(5);
    const [f1, f2] = ws.sent.filter((f) => f.type !== 'ping');
    assert.deepEqual([f1.type, f1.ids], ['archive', ['a']]);
    assert.deepEqual([f2.type, f2.ids, f2.until], ['snooze', ['b'], '2026-12-24T08:00:00.000Z']);
    ws.push({ type: 'ack', ref: f1.ref, seq: 9, unread: 1, unseen: 1 });
    ws.push({ type: 'ack', ref: f2.ref, seq: 10, unread: 0, unseen: 0 });
    assert.deepEqual(await archive, { seq: 9, unread: 1, unseen: 1 });
    assert.deepEqual(await snooze, { seq: 10, unread: 0, unseen: 0 });
    await assert.rejects(c.markUnread('a'), TypeError);
  });

  it('REST: fetchPage builds the query and maps error bodies to NotifydError', async () => {
    const { c } = make();
    const page = await c.fetchPage({ limit: 5, before: 17, unreadOnly: true });
    assert.deepEqual(page, { seq: 4, unread: 0, unseen: 0 });
    assert.equal(rest.at(-1).url, 'http://notifyd.test/api/v1/me/messages?limit=5&before=17&unread_only=true');
    assert.equal(rest.at(-1).method, 'GET');
    failNext = true;
    await assert.rejects(c.fetchPage(), (e) => e instanceof NotifydError && e.code === 'validation_failed' && e.status === 422 && e.field === 'limit');
  });

  it('re-subscribes acked topics after a reconnect', async () => {
    const { c } = make();
    let ws = await connected(c);
    const sub = c.subscribe(['product:1']);
    await tick(5);
    const f = ws.sent.find((x) => x.type === 'subscribe');
    ws.push({ type: 'ack', ref: f.ref, topics: ['product:1'] });
    await sub;
    ws.serverClose(1012);
    await waitFor(() => FakeWS.last() !== ws && FakeWS.last().readyState === 1 && FakeWS.last().onmessage);
    ws = FakeWS.last();
    ws.push({ type: 'hello', user: '42', seq: 0, unread: 0, unseen: 0, heartbeat_s: 25 });
    await tick(5);
    assert.deepEqual(ws.sent.find((x) => x.type === 'subscribe')?.topics, ['product:1']);
  });

  it('sends pings every heartbeat and drops a connection whose pongs stop', async () => {
    const { c, of } = make();
    const ws = await connected(c, { heartbeat_s: 0.04 });
    await waitFor(() => ws.sent.some((f) => f.type === 'ping'));
    ws.push({ type: 'pong', ref: ws.sent[0].ref });
    // now silence: within ~3 intervals the client gives up on this socket
    await waitFor(() => ws.closedWith !== null, 2000);
    assert.equal(ws.closedWith.code, 4000);
    assert.ok(of('status').some((s) => s.state === 'closed' && s.reason === 'heartbeat timeout'));
    await waitFor(() => FakeWS.last() !== ws);
  });

  it('close() stops reconnecting and rejects pending commands', async () => {
    const { c, of } = make();
    const ws = await connected(c);
    const p = c.markAllRead();
    await tick(5);
    c.close();
    await assert.rejects(p, (e) => e.code === 'closed' || e.code === 'disconnected');
    assert.equal(ws.closedWith.code, 1000);
    await tick(50);
    assert.equal(FakeWS.all.length, 1);
    assert.equal(of('status').at(-1).state, 'closed');
  });
});

describe('acknowledgements for Web Push', () => {
  it('acknowledges a burst of user frames once, with its last seq, and never topic frames', async () => {
    const { c, of } = make();
    const ws = await connected(c);
    ws.push(created(1));
    ws.push(created(2));
    ws.push(created(3));
    ws.push({ type: 'topic.event', topic: 'product:1', data: {} });
    await waitFor(() => of('message').length === 3);
    await waitFor(() => ws.sent.some((f) => f.type === 'received'));
    await tick(20);
    assert.deepEqual(ws.sent.filter((f) => f.type === 'received'), [{ type: 'received', seq: 3 }]);
    // A later frame: acknowledged on its own.
    ws.push(created(4));
    await waitFor(() => ws.sent.filter((f) => f.type === 'received').length === 2);
    assert.deepEqual(ws.sent.filter((f) => f.type === 'received').at(-1), { type: 'received', seq: 4 });
  });
});

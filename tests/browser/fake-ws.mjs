// A scripted fake WebSocket for unit tests of web/notifyd-client.js in Node (the test plays the
// server), plus small waiting helpers and an unsigned JWT maker.

export const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

/** A WebSocket the test plays the server of. */
export class FakeWS {
  static all = [];
  constructor(url) {
    this.url = new URL(url);
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeWS.all.push(this);
    setTimeout(() => {
      if (this.readyState === 0) this.readyState = 1;
    }, 0);
  }
  send(data) {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(JSON.parse(data));
  }
  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }
  // --- the test's side
  push(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  serverClose(code, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  get since() {
    return this.url.searchParams.get('since');
  }
  get token() {
    return this.url.searchParams.get('token');
  }
  /** The frames of one type the client sent. */
  sentOf(type) {
    return this.sent.filter((f) => f.type === type);
  }
  static last() {
    return FakeWS.all[FakeWS.all.length - 1];
  }
}

/** Polls `pred` every 2 ms; throws after `ms`. */
export async function waitFor(pred, ms = 5000, what = 'condition') {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await tick(2);
  }
}

const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');

/** A JWT-shaped string with the given claims (signature is junk: the client never verifies). */
export function fakeJwt(claims) {
  return `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}.c2ln`;
}

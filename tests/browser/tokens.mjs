// User JWTs for the browser tests, minted here with Node's crypto (HS256) and the dev secret that
// `serve --dev` signs and verifies with (read from src/config/mod.rs, so the two never drift apart).

import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { repoRoot } from './harness.mjs';

function devSecret() {
  const src = readFileSync(path.join(repoRoot, 'src', 'config', 'mod.rs'), 'utf8');
  const m = src.match(/pub const DEV_JWT_SECRET: &str = "([^"]+)";/);
  if (!m) throw new Error('DEV_JWT_SECRET not found in src/config/mod.rs');
  return m[1];
}

export const DEV_JWT_SECRET = devSecret();

const b64url = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/**
 * An HS256 user token for `user` that expires `ttlSecs` from now (whole seconds, like the server's
 * own tokens). `extra` claims are merged in (e.g. `{ topics: ['product:*'] }`, or `nbf`).
 * @param {string} user
 * @param {number} ttlSecs
 * @param {{secret?: string} & Record<string, *>} [extra]
 */
export function mintToken(user, ttlSecs, { secret = DEV_JWT_SECRET, ...extra } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url({ sub: user, iat: now, exp: now + ttlSecs, ...extra });
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

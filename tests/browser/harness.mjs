// Test harness for the browser tests: a fresh PostgreSQL database and Redis prefix, the notifyd
// binary as `serve --dev` on a free port (killable and restartable on the same port and database),
// and headless Chromium from Debian driven by playwright-core.

import { spawn, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');

export const NOTIFYD_BIN = path.resolve(repoRoot, process.env.NOTIFYD_BIN ?? 'target/debug/notifyd');
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const PGHOST = process.env.PGHOST ?? '127.0.0.1';
const PGPORT = process.env.PGPORT ?? '5432';
const PGUSER = process.env.PGUSER ?? 'postgres';
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

export const SERVICE_KEY = 'dev';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on 127.0.0.1 (the kernel's pick, released right away). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Runs SQL with psql (ON_ERROR_STOP) and returns the unaligned, tuples-only output. */
export async function psql(sql, db = 'postgres') {
  const { stdout } = await run(
    'psql',
    ['-h', PGHOST, '-p', PGPORT, '-U', PGUSER, '-d', db, '-v', 'ON_ERROR_STOP=1', '-qAtX', '-c', sql],
    { env: { ...process.env, PGCONNECT_TIMEOUT: '10' } },
  );
  return stdout.trim();
}

/**
 * A notifyd node with its own database. `start()` may be called again after `kill()`: same port,
 * same database, same Redis prefix (a restart).
 */
export class Notifyd {
  /**
   * @param {{dev?: boolean, env?: Record<string, string>}} [opts] dev=false: a production-mode
   *   node (own JWT secret, no demo); env: variables for the node, set after the inherited
   *   environment is cleaned (which drops NOTIFYD_ALLOWED_ORIGINS, so only `env` can set it)
   */
  constructor({ dev = true, env = {} } = {}) {
    this.dev = dev;
    this.extraEnv = env;
    const tag = randomBytes(6).toString('hex');
    this.db = `notifyd_browser_${tag}`;
    this.redisPrefix = `notifyd-browser-${tag}:`;
    this.port = 0;
    this.proc = null;
    this.logs = [];
  }

  get baseUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  async setup() {
    await psql(`CREATE DATABASE "${this.db}"`);
    this.port = await freePort();
    await this.start();
    return this;
  }

  async start() {
    if (this.proc) throw new Error('notifyd is already running');
    const env = {
      ...process.env,
      NOTIFYD_BIND: `127.0.0.1:${this.port}`,
      DATABASE_URL: `postgres://${PGUSER}@${PGHOST}:${PGPORT}/${this.db}`,
      REDIS_URL,
      NOTIFYD_REDIS_PREFIX: this.redisPrefix,
      RUST_LOG: process.env.RUST_LOG ?? 'info,notifyd::http=warn',
    };
    delete env.NOTIFYD_JWT_SECRET;
    delete env.NOTIFYD_ALLOWED_ORIGINS;
    if (!this.dev) env.NOTIFYD_JWT_SECRET = randomBytes(24).toString('hex');
    Object.assign(env, this.extraEnv);
    const args = this.dev ? ['serve', '--dev'] : ['serve'];
    const proc = spawn(NOTIFYD_BIN, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
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
      if (this.proc !== proc) {
        throw new Error(`notifyd exited during start-up:\n${this.logs.join('').slice(-4000)}`);
      }
      try {
        const res = await fetch(`${this.baseUrl}/readyz`);
        if (res.ok) return;
      } catch {
        /* not listening yet */
      }
      if (Date.now() > deadline) throw new Error(`notifyd not ready after 60 s:\n${this.logs.join('').slice(-4000)}`);
      await sleep(100);
    }
  }

  /** SIGKILL: no close frames, no graceful anything (a crash). */
  async kill() {
    const proc = this.proc;
    if (!proc) return;
    proc.kill('SIGKILL');
    await this.exited;
    this.proc = null;
  }

  /** SIGTERM: a graceful shutdown (sockets closed with 1012). */
  async terminate() {
    const proc = this.proc;
    if (!proc) return;
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
    await this.exited;
    clearTimeout(timer);
    this.proc = null;
  }

  async teardown() {
    await this.kill();
    const logFile = path.join(os.tmpdir(), `${this.db}.log`);
    await writeFile(logFile, this.logs.join('')).catch(() => {});
    console.log(`notifyd log: ${logFile}`);
    try {
      await psql(`DROP DATABASE IF EXISTS "${this.db}" WITH (FORCE)`);
    } catch (e) {
      console.error(`# could not drop ${this.db}: ${e.message}`);
    }
    try {
      // Best effort: presence keys of this prefix (they expire anyway).
      const { stdout } = await run('redis-cli', ['-u', REDIS_URL, '--scan', '--pattern', `${this.redisPrefix}*`]);
      const keys = stdout.split('\n').filter(Boolean);
      if (keys.length) await run('redis-cli', ['-u', REDIS_URL, 'DEL', ...keys]);
    } catch {
      /* redis-cli missing: fine */
    }
  }

  /** POST /api/v1/messages with the dev service key; returns the 201 body. */
  async send(message) {
    const res = await fetch(`${this.baseUrl}/api/v1/messages`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${SERVICE_KEY}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(message),
    });
    const body = await res.json();
    if (res.status !== 201) throw new Error(`POST /api/v1/messages: ${res.status} ${JSON.stringify(body)}`);
    return body;
  }

  sql(statement) {
    return psql(statement, this.db);
  }

  dumpLogs() {
    return this.logs.join('').slice(-6000);
  }
}

/** Headless Chromium (Debian's) with a fresh temporary profile. */
export async function launchBrowser() {
  const { chromium } = await import('playwright-core');
  const userDataDir = await mkdtemp(path.join(os.tmpdir(), 'notifyd-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1180, height: 760 },
    reducedMotion: 'reduce',
  });
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
    },
  };
}

/** A random user id, so tests sharing a server never see each other's messages. */
export function randomUser(prefix = 'u') {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

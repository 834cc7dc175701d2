#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis are reachable on 127.0.0.1, installing (Debian/Ubuntu, apt) and
# starting them when they are absent, that nginx is installed (not started: the chaos harness runs
# its own), and that python3 can make a venv (schemathesis). Safe to run again: it only acts on
# what is missing.
# Env: PGHOST_PORT (default 5432), REDIS_PORT (default 6379).
set -euo pipefail

PG_PORT=${PG_PORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
say() { printf '[services] %s\n' "$*" >&2; }

apt_install() {
  if ! command -v apt-get >/dev/null; then
    say "need to install $*, but apt-get is not available: install it yourself"; exit 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

pg_up() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

# --- PostgreSQL ---
if ! command -v pg_isready >/dev/null || ! pg_up; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    say "installing PostgreSQL"
    apt_install postgresql postgresql-client
    installed_pg=1
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  if [ -n "${installed_pg:-}" ]; then
    # A fresh dev/CI box: let local TCP connections in without a password, as the tests expect.
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  say "starting PostgreSQL $ver"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || $SUDO pg_ctlcluster "$ver" main start || true
  for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
  pg_up || { say "PostgreSQL did not come up on 127.0.0.1:$PG_PORT"; exit 1; }
fi

# --- Redis ---
if ! command -v redis-cli >/dev/null || ! redis_up; then
  if ! command -v redis-server >/dev/null; then
    say "installing Redis"
    apt_install redis-server
  fi
  say "starting Redis"
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/notifyd-dev.log
  for _ in $(seq 1 50); do redis_up && break; sleep 0.2; done
  redis_up || { say "Redis did not come up on 127.0.0.1:$REDIS_PORT"; exit 1; }
fi

# --- nginx (the chaos harness, tests/chaos/, runs docs/deploy/nginx.conf in front of 3 nodes) ---
if [ ! -x /usr/sbin/nginx ]; then
  say "installing nginx"
  apt_install nginx
fi

# --- PgBouncer and openssl (scripts/tls-pooler-test.sh: a PgBouncer of its own in transaction
# mode, and the test certificates; the package's own pgbouncer service is not used) ---
if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
  say "installing pgbouncer"
  apt_install pgbouncer
fi
if ! command -v openssl >/dev/null; then
  say "installing openssl"
  apt_install openssl
fi

# --- python3 with venv + curl (scripts/schemathesis.sh: a venv for the pinned schemathesis) ---
if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  say "installing python3-venv"
  apt_install python3 python3-venv
fi
if ! command -v curl >/dev/null; then
  say "installing curl"
  apt_install curl
fi

# --- Rust ---
if ! command -v cargo >/dev/null; then
  say "cargo is not installed: install Rust >= 1.85 (https://rustup.rs) and run again"; exit 1
fi
say "PostgreSQL and Redis are up"

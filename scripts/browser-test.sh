#!/usr/bin/env bash
# Browser tests: <notifyd-bell> (web/notifyd-bell.js, on the demo page and on pages of another
# origin, checked with axe-core), the demos, the JS client and the web/ npm package in real headless
# Chromium (Debian's package) driven by playwright-core, against the debug binary as
# `serve --dev`, with a fresh PostgreSQL database and Redis prefix per run.
# Installs what is missing (chromium via apt, node_modules via npm ci), builds, runs
# `node --test tests/browser/` and prints the runner's summary (# pass N / # fail N).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh   # PostgreSQL and Redis on 127.0.0.1 (installs/starts them if absent)

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -d tests/browser/node_modules/axe-core ] \
   || [ ! -x tests/browser/node_modules/.bin/tsc ]; then
  echo "== npm ci (tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ -z "${NOTIFYD_BIN:-}" ]; then
  echo "== cargo build"
  cargo build --quiet
  export NOTIFYD_BIN=$PWD/target/debug/notifyd
fi

echo "== node --test tests/browser/ (chromium: $(/usr/bin/chromium --version 2>/dev/null | head -1))"
exec node --test --test-reporter=tap tests/browser/

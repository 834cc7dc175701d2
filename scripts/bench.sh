#!/usr/bin/env bash
# The one command that regenerates docs/benchmarks.md (and docs/bench-latency.{csv,svg}): a
# release build, then every bench in turn, each on the same machine in this one run:
#   load    (benches/load.rs)   write path vs pgbench, relay, 5,000 sockets, announcements
#   fanout  (benches/fanout.rs) 10,000-socket topic fan-out vs a trivial ceiling server
#   peers   (benches/peers.rs)  notifyd vs the Socket.IO peer and NATS: memory, latency, fan-out
#   storm   (benches/storm.rs)  reconnect storm, when that bench exists
# Needs PostgreSQL and Redis (scripts/services.sh starts them), node/npm and pip for the peers.
# BENCH_ONLY="peers fanout" runs only those benches (a space-separated list).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export TEST_DATABASE_ADMIN_URL=${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
only=${BENCH_ONLY:-load fanout peers storm}
wants() { [[ " $only " == *" $1 "* ]]; }

cargo build --release

doc=docs/benchmarks.md
if wants load; then
  echo "== load"
  # benches/load.rs writes the page from scratch: keep every section it does not write (those
  # of the other benches, and the ones measured by tests) and put them back after it.
  mkdir -p target
  cp "$doc" target/benchmarks.before.md
  cargo bench --bench load
  python3 - "$doc" target/benchmarks.before.md <<'EOF'
import re, sys
new_path, old_path = sys.argv[1], sys.argv[2]
new, old = open(new_path).read(), open(old_path).read()

def chunks(text):
    """Top-level parts: a `<!-- x:begin -->`..`<!-- x:end -->` block, or a `## ` section."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = re.match(r"<!-- ([a-z0-9_-]+):begin -->", lines[i])
        if m:
            end = f"<!-- {m.group(1)}:end -->"
            j = next((k for k in range(i, len(lines)) if lines[k].startswith(end)), len(lines) - 1)
            out.append((m.group(0), "\n".join(lines[i:j + 1])))
            i = j + 1
        elif lines[i].startswith("## "):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("## ") and not re.match(r"<!-- [a-z0-9_-]+:begin -->", lines[j]):
                j += 1
            out.append((lines[i], "\n".join(lines[i:j]).rstrip("\n")))
            i = j
        else:
            i += 1
    return out

keys = {k for k, _ in chunks(new)}
kept = [body for k, body in chunks(old) if k not in keys]
if kept:
    open(new_path, "w").write(new.rstrip("\n") + "\n\n" + "\n\n".join(kept) + "\n")
EOF
fi
if wants fanout; then
  echo "== fanout"
  BENCH_FANOUT_CONNS=10000 BENCH_FANOUT_LABEL=current cargo bench --bench fanout
fi
if wants peers; then
  echo "== peers"
  cargo bench --bench peers
fi
if wants storm && [ -f benches/storm.rs ]; then
  echo "== storm"
  BENCH_STORM_CLIENTS=15000 BENCH_STORM_LABEL=current cargo bench --bench storm
fi
echo "docs/benchmarks.md regenerated"

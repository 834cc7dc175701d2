# Helpers for the scripts that start servers of their own for a test run (tls-pooler-test.sh,
# replica-test.sh, redis-cluster-test.sh): free ports, waiting for a server, running PostgreSQL's
# tools as `postgres`, a PgBouncer in transaction mode, certificates from a private CA.
# Sourced, not run: `. "$(dirname "$0")/lib/servers.sh"`. The caller sets `say_tag` (the
# `[tag]` of its messages) and `set -euo pipefail`; these functions keep to that.

# A message on stderr, tagged with the caller's `say_tag`.
say() { printf '[%s] %s\n' "${say_tag:-servers}" "$*" >&2; }

# A TCP port on 127.0.0.1 that nothing listens on (the kernel's pick; free when asked, so take it
# at once).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A free port for a Redis Cluster node: the node also listens on port + 10000 (the cluster bus),
# so both must be free.
free_cluster_port() {
  python3 -c '
import socket
while True:
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    if p + 10000 > 65535: a.close(); continue
    try:
        b = socket.socket(); b.bind(("127.0.0.1", p + 10000)); b.close(); a.close(); print(p); break
    except OSError:
        a.close()'
}

# wait_for DESCRIPTION COMMAND...: runs COMMAND every 0.1 s until it succeeds, for at most 10 s;
# then fails, saying DESCRIPTION did not come up.
wait_for() {
  local what=$1; shift
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  say "$what did not come up"; return 1
}

# as_pg COMMAND...: initdb, postgres, pg_basebackup and pgbouncer refuse to run as root; as root
# COMMAND runs as the `postgres` user, else as the caller.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# The newest installed PostgreSQL's bin directory (Debian's layout), or $PG_BIN.
pg_bin_dir() {
  echo "${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)}"
}

# new_work_dir NAME: a fresh directory under /tmp for one run's servers, readable by all and
# owned by `postgres` when we are root (the servers run as `postgres` then, see as_pg).
new_work_dir() {
  local dir
  dir=$(mktemp -d "/tmp/notifyd-$1.XXXXXX")
  chmod 755 "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
  echo "$dir"
}

# kill_pidfile FILE: stops the process whose pid FILE holds, if FILE exists (for cleanups: never
# fails).
kill_pidfile() {
  if [ -f "$1" ]; then kill "$(cat "$1")" 2>/dev/null || true; fi
}

# start_transaction_pgbouncer DIR PORT HOST HOST_PORT: Debian's PgBouncer (installed by
# scripts/services.sh) with its default settings but `pool_mode = transaction`, on
# 127.0.0.1:PORT, in front of the PostgreSQL at HOST:HOST_PORT (every database, user `postgres`,
# trust), its files in DIR (pgbouncer.ini, users.txt, pgbouncer.pid, pgbouncer.log). Returns when
# it answers a query. Stop it with `kill_pidfile DIR/pgbouncer.pid`.
start_transaction_pgbouncer() {
  local dir=$1 port=$2 host=$3 host_port=$4
  cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=$host port=$host_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
pidfile = $dir/pgbouncer.pid
logfile = $dir/pgbouncer.log
EOF
  echo '"postgres" ""' >"$dir/users.txt"
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir"; fi
  as_pg "$(pgbouncer_bin)" -d "$dir/pgbouncer.ini"
  wait_for "pgbouncer" psql "postgres://postgres@127.0.0.1:$port/postgres" -c 'SELECT 1'
}

pgbouncer_bin() { command -v pgbouncer || echo /usr/sbin/pgbouncer; }

# pgbouncer_test_logins DIR: how many logins to a test database (`notifyd_test_*`, made by
# tests/api/helpers/db.rs) the PgBouncer of DIR logged: proof that the tests went through it.
pgbouncer_test_logins() {
  grep -c 'login attempt: db=notifyd_test_' "$1/pgbouncer.log" || true
}

# make_ca DIR NAME "CN": a self-signed CA (P-256, valid 2 days): DIR/NAME.pem and DIR/NAME.key.
make_ca() {
  local dir=$1 name=$2 cn=$3
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=$cn" -keyout "$dir/$name.key" -out "$dir/$name.pem" 2>/dev/null
  chmod 644 "$dir/$name.pem"
}

# make_cert DIR NAME CA SAN EKU: a certificate for CN=localhost signed by DIR/CA.pem, naming SAN
# (`DNS:localhost`, `DNS:localhost,IP:127.0.0.1`) and for the extended key usages EKU
# (`serverAuth`, or `serverAuth,clientAuth` for a server that also connects to its peers with
# it): DIR/NAME.pem (readable by all) and DIR/NAME.key (mode 600, owned by `postgres` when we are
# root, as PostgreSQL demands of its key).
make_cert() {
  local dir=$1 name=$2 ca=$3 san=$4 eku=$5
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=%s\n' \
    "$san" "$eku" >"$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$ca.pem" -CAkey "$dir/$ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/$name.ext" -out "$dir/$name.pem" 2>/dev/null
  chmod 644 "$dir/$name.pem"
  chmod 600 "$dir/$name.key"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir/$name.key"; fi
}

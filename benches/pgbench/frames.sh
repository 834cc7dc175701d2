#!/usr/bin/env bash
# What writing each frame twice costs the create statement, and what the second copy buys the
# relay (issue 22 item 8; docs/decisions/0018-frames-written-twice.md). SQL-level only: no
# notifyd build needed (the schema comes from migrations/*/up.sql, the statement from
# src/store/create_rows.rs, so both track the tree this runs in).
#
#   benches/pgbench/frames.sh write [rounds]   # the create statement, 4 shapes x 1/100 rows
#   benches/pgbench/frames.sh relay [rounds]   # the relay's claim over a 200,000-event backlog
#
# write: per round, on a fresh copy of a migrated template database (5,000 recipients' counters,
# CHECKPOINT before each run), `pgbench -n -M prepared` of
#   handler-N      store::create_rows::SQL verbatim (as benches/load.rs `pgbench_script(N)`),
#   header-only-N  the same statement whose outbox row carries only the envelope's header line
#                  (the frame stays in user_event only),
#   no-frames-N    the same statement writing no frame (header line only, a small event row),
#   no-build-N     no-frames, the frame not even built (`f` carries NULL),
#   once-text-N    header-only, and the event log's payload a text column holding the frame as
#                  built (a template whose user_event.payload is text): writing once, as text,
#   minimal-N      benches/pgbench/minimal-batch-100.sql (no frame text at all),
# for N = 1 (64 clients) and N = 100 (8 clients), as benches/load.rs runs the handler's; the
# order of the shapes rotates each round (SHAPES="handler once-text ..." picks them). Prints
# "round script tps load".
#
# relay: builds a 200,000-event backlog once with handler-100 (real frames), then per round, on
# fresh copies, drains it with the claim at batch 2,000 (100 transactions, 1 client, the relay
# session's settings) as `store::outbox::claim_and_delete` runs it today (envelope from the
# outbox) against a claim that joins `user_event` for the frame (outbox holding the header only),
# on the event log as it is (jsonb, turned into text per row) and with its payload as text.
#
# env: PG_ADMIN (postgres://postgres@127.0.0.1:5432), PGBENCH_SECS (15)
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-write}
rounds=${2:-3}
admin=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432}
secs=${PGBENCH_SECS:-15}
dir=$(mktemp -d)
tag="frames_$$"
cleanup() {
  for db in $(psql -Atq "$admin/postgres" -c "SELECT datname FROM pg_database WHERE datname LIKE '${tag}%'"); do
    psql -q "$admin/postgres" -c "DROP DATABASE IF EXISTS $db" || true
  done
  rm -rf "$dir"
}
trap cleanup EXIT
load() { cut -d' ' -f1 /proc/loadavg; }

# The handler's statement with its parameters written out, as benches/load.rs `pgbench_script`.
handler_script() { # rows
  perl -0777 -ne '
    my $rows = '"$1"';
    /pub const SQL: &str = r#"(.*?)"#;/s or die "no SQL in create_rows.rs";
    my $sql = $1;
    my $n = "generate_series(1, $rows)";
    my $each = sub { "ARRAY(SELECT $_[0] FROM $n)" };
    my $user = q{'"'"'p'"'"' || ((:u + 31 * g) % 5000)};
    my $tmpl = q{jsonb_build_object('"'"'title'"'"', '"'"'bench'"'"', '"'"'content'"'"', repeat('"'"'x'"'"', 100), '"'"'type'"'"', '"'"'bench'"'"', '"'"'send_user'"'"', NULL, '"'"'skip_url'"'"', NULL, '"'"'is_read'"'"', false, '"'"'read_at'"'"', NULL, '"'"'data'"'"', NULL, '"'"'send_time'"'"', now())};
    my %p = (
      1 => $each->(q{'"'"'bench'"'"'::text}),
      2 => $each->(q{repeat('"'"'x'"'"', 100)}),
      3 => $each->(q{'"'"'bench'"'"'::text}),
      4 => $each->("NULL::text"),
      5 => $each->("NULL::text"),
      6 => $each->("NULL::jsonb"),
      7 => $each->("substr(($tmpl)::text, 2)"),
      8 => "ARRAY(SELECT g::int4 FROM $n g)",
      9 => "ARRAY(SELECT $user FROM $n g)",
      10 => $each->("0::int8"),
      11 => $each->("gen_random_uuid()"),
      12 => "ARRAY(SELECT $user FROM $n g ORDER BY 1)",
      13 => $each->("1::int8"),
      14 => "now()",
      15 => q{'"'"'pgbench'"'"'},
      16 => "NULL",
    );
    for my $i (reverse 1..16) { $sql =~ s/\$$i\b/$p{$i}/g; }
    $sql =~ s/\n/ /g;
    print "\\set u random(1, 5000)\n$sql;\n";
  ' src/store/create_rows.rs
}

# The same statement, its outbox row holding the envelope's header line only.
header_only_script() { # rows
  handler_script "$1" | perl -pe 's/E'"'"'\\n'"'"' \|\| frame FROM f ORDER BY ord/E'"'"'\\n'"'"' FROM f ORDER BY ord/ or $. == 1 or die "outbox envelope not found\n"'
}

# The same statement writing no frame at all: the outbox row holds the header line, the event
# row a small object (the frame is still built in `f`, as a rebuild would have to): what the
# statement's other parts (preferences, push, counters, message rows) cost without any copy.
no_frames_script() { # rows
  header_only_script "$1" | perl -pe 's/SELECT to_user, seq, frame::jsonb FROM f/SELECT to_user, seq, jsonb_build_object('"'"'seq'"'"', seq) FROM f/ or $. == 1 or die "event insert not found\n"'
}

# Writing once, as text: the event log's payload a `text` column holding the frame as built (no
# jsonb), the outbox row its header line. Runs on a template whose user_event.payload is text.
once_text_script() { # rows
  header_only_script "$1" | perl -pe 's/SELECT to_user, seq, frame::jsonb FROM f/SELECT to_user, seq, frame FROM f/ or $. == 1 or die "event insert not found\n"'
}

# no-frames without building the frame either (`f` carries NULL): what building it costs.
no_build_script() { # rows
  no_frames_script "$1" | perl -pe 's/SELECT ord, to_user, seq, epoch, .*? AS frame FROM w/SELECT ord, to_user, seq, epoch, NULL::text AS frame FROM w/ or $. == 1 or die "frame not found\n"'
}

template_db() { # name
  psql -q "$admin/postgres" -c "CREATE DATABASE $1"
  for m in migrations/*/up.sql; do
    psql -q -v ON_ERROR_STOP=1 -1 -f "$m" "$admin/$1" > /dev/null
  done
  psql -q "$admin/$1" -c "INSERT INTO user_inbox_state (user_id) SELECT 'p' || g FROM generate_series(0, 4999) g"
}

for n in 1 100; do
  handler_script $n > "$dir/handler-$n.sql"
  header_only_script $n > "$dir/header-only-$n.sql"
  grep -q "E'\\\\n' FROM f ORDER BY ord" "$dir/header-only-$n.sql" || { echo "header-only variant not applied" >&2; exit 1; }
  no_frames_script $n > "$dir/no-frames-$n.sql"
  grep -q "jsonb_build_object('seq', seq) FROM f" "$dir/no-frames-$n.sql" || { echo "no-frames variant not applied" >&2; exit 1; }
  once_text_script $n > "$dir/once-text-$n.sql"
  no_build_script $n > "$dir/no-build-$n.sql"
  sed "s/generate_series(1, 100)/generate_series(1, $n)/" benches/pgbench/minimal-batch-100.sql > "$dir/minimal-$n.sql"
done

if [ "$mode" = write ]; then
  template_db "${tag}_tmpl"
  psql -q "$admin/postgres" -c "CREATE DATABASE ${tag}_tmpl_text TEMPLATE ${tag}_tmpl"
  psql -q "$admin/${tag}_tmpl_text" -c "ALTER TABLE user_event ALTER COLUMN payload TYPE text USING payload::text"
  read -r -a shapes <<< "${SHAPES:-handler header-only no-frames minimal}"
  ns=${#shapes[@]}
  for round in $(seq 1 "$rounds"); do
    for n in 1 100; do
      clients=$([ "$n" = 1 ] && echo 64 || echo 8)
      for k in $(seq 0 $((ns - 1))); do
        s=${shapes[$(((k + round - 1) % ns))]}
        tmpl=${tag}_tmpl
        [ "$s" = once-text ] && tmpl=${tag}_tmpl_text
        db="${tag}_w"
        psql -q "$admin/postgres" -c "CREATE DATABASE $db TEMPLATE $tmpl"
        psql -q "$admin/$db" -c "CHECKPOINT"
        l=$(load)
        tps=$(pgbench -n -M prepared -c "$clients" -j 2 -T "$secs" -f "$dir/$s-$n.sql" "$admin/$db" 2>&1 |
          awk '/^tps/ {print $3}')
        sizes=$(psql -Atq "$admin/$db" -c "SELECT (pg_total_relation_size('outbox') / greatest(count(*), 1))::int FROM outbox" \
          -c "SELECT ((SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'user_event'::regclass) / greatest((SELECT count(*) FROM user_event), 1))::int" | tr '\n' ' ')
        echo "$round $s-$n $tps tps (clients $clients, load $l; bytes per row outbox/user_event: $sizes)"
        psql -q "$admin/postgres" -c "DROP DATABASE $db"
      done
    done
  done
  exit 0
fi

# relay
# The claim as store::outbox::claim_and_delete runs it (one partition), batch 2,000.
cat > "$dir/claim-today.sql" <<'SQL'
WITH c AS ( DELETE FROM outbox WHERE id = ANY(ARRAY( SELECT id FROM outbox WHERE TRUE ORDER BY id LIMIT 2000 FOR UPDATE SKIP LOCKED)) RETURNING id, user_id, seq, topic, envelope, frame, payload, created_at) SELECT c.id, c.user_id, c.topic, COALESCE(c.envelope, c.frame, c.payload::text, (SELECT e.payload::text FROM user_event e WHERE e.user_id = c.user_id AND e.seq = c.seq)) AS payload, EXTRACT(EPOCH FROM clock_timestamp() - c.created_at)::float8 AS age_s FROM c ORDER BY c.id;
SQL
# Writing once: the outbox row holds the header line, the frame is read from the event log
# (its jsonb as text) by a join on (user_id, seq).
cat > "$dir/claim-join.sql" <<'SQL'
WITH c AS ( DELETE FROM outbox WHERE id = ANY(ARRAY( SELECT id FROM outbox WHERE TRUE ORDER BY id LIMIT 2000 FOR UPDATE SKIP LOCKED)) RETURNING id, user_id, seq, topic, envelope, frame, payload, created_at) SELECT c.id, c.user_id, c.topic, c.envelope || e.payload::text AS payload, EXTRACT(EPOCH FROM clock_timestamp() - c.created_at)::float8 AS age_s FROM c LEFT JOIN user_event e ON e.user_id = c.user_id AND e.seq = c.seq ORDER BY c.id;
SQL
template_db "${tag}_full"
echo "building the 200,000-event backlog (handler-100, 2,000 statements)"
pgbench -n -M prepared -c 4 -j 2 -t 500 -f "$dir/handler-100.sql" "$admin/${tag}_full" > /dev/null 2>&1
psql -Atq "$admin/${tag}_full" -c "SELECT 'outbox ' || count(*) || ' rows, avg envelope ' || avg(octet_length(envelope))::int || ' B' FROM outbox" \
  -c "SELECT 'user_event ' || count(*) || ' rows, avg payload::text ' || avg(octet_length(payload::text))::int || ' B' FROM user_event"
# The header-only copy: the same events, the outbox rows cut to their header line.
psql -q "$admin/postgres" -c "CREATE DATABASE ${tag}_hdr TEMPLATE ${tag}_full"
psql -q "$admin/${tag}_hdr" -c "UPDATE outbox SET envelope = split_part(envelope, E'\n', 1) || E'\n'" -c "VACUUM FULL outbox"
# Writing once as text: the header-only copy with the event log's payload as text.
psql -q "$admin/postgres" -c "CREATE DATABASE ${tag}_txt TEMPLATE ${tag}_hdr"
psql -q "$admin/${tag}_txt" -c "ALTER TABLE user_event ALTER COLUMN payload TYPE text USING payload::text"
for db in "${tag}_full" "${tag}_hdr" "${tag}_txt"; do psql -q "$admin/$db" -c "VACUUM ANALYZE" -c "CHECKPOINT"; done
for round in $(seq 1 "$rounds"); do
  for k in 0 1 2; do
    case $(((k + round - 1) % 3)) in
      0) v=today; script=today; src="${tag}_full" ;;
      1) v=join; script=join; src="${tag}_hdr" ;;
      *) v=join-text; script=join; src="${tag}_txt" ;;
    esac
    db="${tag}_r"
    psql -q "$admin/postgres" -c "CREATE DATABASE $db TEMPLATE $src"
    psql -q "$admin/$db" -c "SELECT count(*) FROM outbox" -c "SELECT count(*) FROM user_event" -c "CHECKPOINT" > /dev/null
    l=$(load)
    out=$(PGOPTIONS='-c synchronous_commit=off -c enable_seqscan=off' \
      pgbench -n -M prepared -c 1 -t 100 -f "$dir/claim-$script.sql" "$admin/$db" 2>&1)
    lat=$(echo "$out" | awk '/latency average/ {print $4}')
    tps=$(echo "$out" | awk '/^tps/ {print $3}')
    left=$(psql -Atq "$admin/$db" -c "SELECT count(*) FROM outbox")
    echo "$round claim-$v ${lat} ms per 2,000-row batch, $(awk -v t="$tps" 'BEGIN {printf "%.0f", t * 2000}') rows/s (left $left, load $l)"
    psql -q "$admin/postgres" -c "DROP DATABASE $db"
  done
done
# Catch-up: a resume reads the user's events after `since` from the event log
# (store::events::range / resume_many), which stays in every design above; only its payload's
# type would change with `once-text`. One user's events after seq 0 (40 on average here), 4
# clients, on the backlog as the handler wrote it (jsonb) and with the payload as text.
cat > "$dir/catch-up.sql" <<'SQL'
\set u random(0, 4999)
SELECT seq, payload FROM user_event WHERE user_id = 'p' || :u AND seq > 0 ORDER BY seq LIMIT 1000;
SQL
for round in $(seq 1 "$rounds"); do
  for k in 0 1; do
    if [ $(((k + round) % 2)) = 1 ]; then v=jsonb; db="${tag}_full"; else v=text; db="${tag}_txt"; fi
    l=$(load)
    tps=$(pgbench -n -M prepared -c 4 -j 2 -T "$secs" -f "$dir/catch-up.sql" "$admin/$db" 2>&1 | awk '/^tps/ {print $3}')
    echo "$round catch-up-$v $tps reads/s (load $l)"
  done
done

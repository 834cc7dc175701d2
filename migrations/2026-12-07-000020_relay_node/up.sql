-- The live relay processes, so partitions spread over them without a coordinator
-- (src/outbox/share.rs). Each relay process upserts its own row every second (seen_at on the
-- database's clock) and reads the others': a row not seen for 5 s, or whose heartbeat session
-- (`pid`) is gone, is a relay that died. `led` is the public answer to "who leads what": the
-- partitions that process leads right now.
CREATE TABLE relay_node (
    id text PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now(),
    pid integer NOT NULL,
    partitions integer NOT NULL,
    led integer[] NOT NULL DEFAULT '{}'
);

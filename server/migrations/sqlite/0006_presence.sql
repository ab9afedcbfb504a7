-- Shared presence: which replica holds a config stream of which node, as
-- of when it last said so. Replaces nodes.connected, which stays (older
-- databases have it) but is no longer read or written.
CREATE TABLE presence (
    node_id    TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    replica    TEXT NOT NULL,
    seen_time  INTEGER NOT NULL,
    PRIMARY KEY (node_id, replica)
);
-- A replica replaces its own entries; stale ones expire by time.
CREATE INDEX presence_replica ON presence(replica);
CREATE INDEX presence_seen ON presence(seen_time);

-- Pruning the event log by age.
CREATE INDEX events_time ON events(event_time);

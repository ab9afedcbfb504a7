-- External clients, the event log, and each network's config revision.

-- The revision of the last event that changed the configs in a network.
ALTER TABLE networks ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;

CREATE TABLE ext_clients (
    id                   TEXT PRIMARY KEY NOT NULL,
    network              TEXT NOT NULL REFERENCES networks(name) ON DELETE CASCADE,
    ingress_node_id      TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    name                 TEXT NOT NULL,
    public_key           TEXT NOT NULL,
    -- ChaCha20-Poly1305 under the server's secret key; NULL when the
    -- caller supplied the public key.
    sealed_private_key   BLOB,
    address              TEXT,
    address6             TEXT,
    dns                  TEXT NOT NULL DEFAULT '',
    enabled              INTEGER NOT NULL DEFAULT 1,
    config_revision      INTEGER NOT NULL DEFAULT 0,
    downloaded_revision  INTEGER NOT NULL DEFAULT 0,
    create_time          INTEGER NOT NULL,
    update_time          INTEGER NOT NULL,
    UNIQUE (network, name),
    UNIQUE (network, public_key)
);
CREATE INDEX ext_clients_ingress ON ext_clients(ingress_node_id);

-- Every change, in order. The revision is the global, durable sequence the
-- config revisions and the event stream are numbered by.
CREATE TABLE events (
    revision     INTEGER PRIMARY KEY AUTOINCREMENT,
    network      TEXT,
    kind         TEXT NOT NULL,
    resource_id  TEXT NOT NULL,
    action       INTEGER NOT NULL,
    payload      TEXT NOT NULL,
    event_time   INTEGER NOT NULL
);
CREATE INDEX events_network ON events(network, revision);

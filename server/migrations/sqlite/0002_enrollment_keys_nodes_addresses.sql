-- Enrollment keys, nodes and the overlay address pool.

CREATE TABLE enrollment_keys (
    id              TEXT PRIMARY KEY NOT NULL,
    hash            BLOB NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    uses_remaining  INTEGER NOT NULL,
    unlimited       INTEGER NOT NULL,
    expire_time     INTEGER,
    create_time     INTEGER NOT NULL
);

CREATE TABLE enrollment_key_networks (
    key_id   TEXT NOT NULL REFERENCES enrollment_keys(id) ON DELETE CASCADE,
    network  TEXT NOT NULL REFERENCES networks(name) ON DELETE CASCADE,
    PRIMARY KEY (key_id, network)
);
CREATE INDEX enrollment_key_networks_network ON enrollment_key_networks(network);

CREATE TABLE nodes (
    id                TEXT PRIMARY KEY NOT NULL,
    network           TEXT NOT NULL REFERENCES networks(name) ON DELETE CASCADE,
    name              TEXT NOT NULL,
    public_key        TEXT NOT NULL,
    endpoint          TEXT NOT NULL DEFAULT '',
    listen_port       INTEGER NOT NULL,
    address           TEXT,
    address6          TEXT,
    os                TEXT NOT NULL DEFAULT '',
    keepalive         INTEGER NOT NULL DEFAULT 0,
    -- Egress gateway: NULL ranges when the node is not one.
    egress_ranges     TEXT,
    egress_interface  TEXT NOT NULL DEFAULT '',
    egress_nat        INTEGER NOT NULL DEFAULT 1,
    -- Ingress gateway.
    ingress           INTEGER NOT NULL DEFAULT 0,
    ingress_dns       TEXT NOT NULL DEFAULT '',
    token_id          TEXT NOT NULL UNIQUE,
    token_hash        BLOB NOT NULL,
    connected         INTEGER NOT NULL DEFAULT 0,
    last_seen         INTEGER,
    applied_revision  INTEGER NOT NULL DEFAULT 0,
    create_time       INTEGER NOT NULL,
    update_time       INTEGER NOT NULL,
    UNIQUE (network, name),
    UNIQUE (network, public_key)
);

-- Every overlay address handed out, to nodes and external clients alike:
-- the primary key makes the database refuse a second owner.
CREATE TABLE ip_allocations (
    network     TEXT NOT NULL REFERENCES networks(name) ON DELETE CASCADE,
    family      INTEGER NOT NULL,
    host_offset INTEGER NOT NULL,
    owner_kind  TEXT NOT NULL,
    owner_id    TEXT NOT NULL,
    PRIMARY KEY (network, family, host_offset)
);
CREATE INDEX ip_allocations_owner ON ip_allocations(owner_id);

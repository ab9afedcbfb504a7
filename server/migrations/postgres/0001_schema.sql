-- meshplane's whole schema on PostgreSQL, shared by every replica.
--
-- Native types: cidr for ranges, inet for addresses, inet[] for address
-- lists, timestamptz for times, bytea for hashes and sealed keys, jsonb
-- for host reports and event payloads. Identifiers and names are
-- COLLATE "C" so that ordering (and keyset pagination) is byte-wise, the
-- same as SQLite's, whatever the database's locale.

-- Networks. `revision` is the revision of the last event that changed the
-- configs in the network.
CREATE TABLE networks (
    name            text COLLATE "C" PRIMARY KEY,
    range4          cidr CHECK (family(range4) = 4),
    range6          cidr CHECK (family(range6) = 6),
    keepalive       bigint NOT NULL,
    mtu             bigint NOT NULL,
    listen_port     bigint NOT NULL,
    ext_client_dns  inet[] NOT NULL DEFAULT '{}',
    nameservers     inet[] NOT NULL DEFAULT '{}',
    create_time     timestamptz NOT NULL,
    update_time     timestamptz NOT NULL,
    revision        bigint NOT NULL DEFAULT 0
);

-- Admin tokens: the record and the SHA-256 of the token, never the secret.
CREATE TABLE admin_tokens (
    id           text COLLATE "C" PRIMARY KEY,
    name         text NOT NULL,
    hash         bytea NOT NULL,
    create_time  timestamptz NOT NULL
);

-- Enrollment keys and the networks each admits to.
CREATE TABLE enrollment_keys (
    id              text COLLATE "C" PRIMARY KEY,
    hash            bytea NOT NULL,
    description     text NOT NULL DEFAULT '',
    uses_remaining  bigint NOT NULL CHECK (uses_remaining >= 0),
    unlimited       boolean NOT NULL,
    expire_time     timestamptz,
    create_time     timestamptz NOT NULL
);

CREATE TABLE enrollment_key_networks (
    key_id   text COLLATE "C" NOT NULL REFERENCES enrollment_keys(id) ON DELETE CASCADE,
    network  text COLLATE "C" NOT NULL REFERENCES networks(name) ON DELETE CASCADE,
    PRIMARY KEY (key_id, network)
);
CREATE INDEX enrollment_key_networks_network ON enrollment_key_networks(network);

-- Nodes. Whether a node is connected is not stored here: see `presence`.
CREATE TABLE nodes (
    id                   text COLLATE "C" PRIMARY KEY,
    network              text COLLATE "C" NOT NULL REFERENCES networks(name) ON DELETE CASCADE,
    name                 text COLLATE "C" NOT NULL,
    public_key           text COLLATE "C" NOT NULL,
    -- host:port where peers dial it; NULL behind NAT.
    endpoint             text,
    listen_port          bigint NOT NULL,
    address              inet CHECK (family(address) = 4 AND masklen(address) = 32),
    address6             inet CHECK (family(address6) = 6 AND masklen(address6) = 128),
    os                   text NOT NULL DEFAULT '',
    keepalive            bigint NOT NULL DEFAULT 0,
    -- Egress gateway: NULL ranges when the node is not one.
    egress_ranges        cidr[],
    egress_interface     text NOT NULL DEFAULT '',
    egress_nat           boolean NOT NULL DEFAULT true,
    -- Ingress gateway.
    ingress              boolean NOT NULL DEFAULT false,
    ingress_dns          inet[] NOT NULL DEFAULT '{}',
    token_id             text COLLATE "C" NOT NULL UNIQUE,
    token_hash           bytea NOT NULL,
    last_seen            timestamptz,
    applied_revision     bigint NOT NULL DEFAULT 0,
    create_time          timestamptz NOT NULL,
    update_time          timestamptz NOT NULL,
    -- The WireGuard interface the agent manages; NULL until it reports one.
    wireguard_interface  text,
    -- The host's interfaces and routes; NULL until the agent reports.
    host_report          jsonb,
    -- Why the last apply failed (NULL when it did not), and its revision.
    apply_error          text,
    failed_revision      bigint NOT NULL DEFAULT 0,
    UNIQUE (network, name),
    UNIQUE (network, public_key)
);

-- Every overlay address handed out, to nodes and external clients alike:
-- the primary key makes the database refuse a second owner. Offsets count
-- from the start of the network's range of that family (4 or 6).
CREATE TABLE ip_allocations (
    network      text COLLATE "C" NOT NULL REFERENCES networks(name) ON DELETE CASCADE,
    family       smallint NOT NULL CHECK (family IN (4, 6)),
    host_offset  bigint NOT NULL CHECK (host_offset >= 1),
    owner_kind   text NOT NULL CHECK (owner_kind IN ('node', 'ext_client', 'dns_entry')),
    owner_id     text COLLATE "C" NOT NULL,
    PRIMARY KEY (network, family, host_offset)
);
CREATE INDEX ip_allocations_owner ON ip_allocations(owner_id);

-- External clients of ingress gateways.
CREATE TABLE ext_clients (
    id                   text COLLATE "C" PRIMARY KEY,
    network              text COLLATE "C" NOT NULL REFERENCES networks(name) ON DELETE CASCADE,
    ingress_node_id      text COLLATE "C" NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    name                 text COLLATE "C" NOT NULL,
    public_key           text COLLATE "C" NOT NULL,
    -- ChaCha20-Poly1305 under the server's secret key; NULL when the
    -- caller supplied the public key.
    sealed_private_key   bytea,
    address              inet CHECK (family(address) = 4 AND masklen(address) = 32),
    address6             inet CHECK (family(address6) = 6 AND masklen(address6) = 128),
    dns                  inet[] NOT NULL DEFAULT '{}',
    enabled              boolean NOT NULL DEFAULT true,
    config_revision      bigint NOT NULL DEFAULT 0,
    downloaded_revision  bigint NOT NULL DEFAULT 0,
    create_time          timestamptz NOT NULL,
    update_time          timestamptz NOT NULL,
    UNIQUE (network, name),
    UNIQUE (network, public_key)
);
CREATE INDEX ext_clients_ingress ON ext_clients(ingress_node_id);

-- Custom DNS entries (automatic ones are derived from nodes and clients).
CREATE TABLE dns_entries (
    network      text COLLATE "C" NOT NULL REFERENCES networks(name) ON DELETE CASCADE,
    name         text COLLATE "C" NOT NULL,
    address      inet CHECK (family(address) = 4 AND masklen(address) = 32),
    address6     inet CHECK (family(address6) = 6 AND masklen(address6) = 128),
    create_time  timestamptz NOT NULL,
    PRIMARY KEY (network, name)
);

-- Every change, in order. The revision is the global, durable, dense
-- sequence configs and the event stream are numbered by; it is taken from
-- `log_head`, not from a sequence (sequences leave gaps and hand numbers
-- out in an order other than commit order). Events outlive what they
-- describe, so `network` is no foreign key.
CREATE TABLE events (
    revision     bigint PRIMARY KEY CHECK (revision >= 1),
    network      text COLLATE "C",
    kind         text NOT NULL,
    resource_id  text NOT NULL,
    action       smallint NOT NULL CHECK (action BETWEEN 1 AND 3),
    payload      jsonb NOT NULL,
    event_time   timestamptz NOT NULL
);
-- Pruning looks for the newest event older than its cutoff.
CREATE INDEX events_time ON events(event_time);

-- The newest revision ever appended, in one row. An append increments it
-- and holds the row lock until its transaction ends: appends are
-- serialised, commit in revision order, and a rolled-back append gives
-- its number back.
CREATE TABLE log_head (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    revision  bigint NOT NULL CHECK (revision >= 0)
);
INSERT INTO log_head (id, revision) VALUES (true, 0);

-- Which replica holds a config stream of which node, as of when. Each
-- replica refreshes its own rows; rows of a replica that stopped
-- refreshing expire.
CREATE TABLE presence (
    node_id    text COLLATE "C" NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    replica    text COLLATE "C" NOT NULL,
    seen_time  timestamptz NOT NULL,
    PRIMARY KEY (node_id, replica)
);
CREATE INDEX presence_replica ON presence(replica);

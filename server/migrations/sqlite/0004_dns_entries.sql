-- Custom DNS entries (automatic ones are derived from nodes and clients).
CREATE TABLE dns_entries (
    network      TEXT NOT NULL REFERENCES networks(name) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    address      TEXT,
    address6     TEXT,
    create_time  INTEGER NOT NULL,
    PRIMARY KEY (network, name)
);

-- Networks and admin tokens. Times are microseconds since the Unix epoch.
CREATE TABLE networks (
    name            TEXT PRIMARY KEY NOT NULL,
    range4          TEXT,
    range6          TEXT,
    keepalive       INTEGER NOT NULL,
    mtu             INTEGER NOT NULL,
    listen_port     INTEGER NOT NULL,
    ext_client_dns  TEXT NOT NULL DEFAULT '',
    nameservers     TEXT NOT NULL DEFAULT '',
    create_time     INTEGER NOT NULL,
    update_time     INTEGER NOT NULL
);

CREATE TABLE admin_tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    hash         BLOB NOT NULL,
    create_time  INTEGER NOT NULL
);

-- Access policies (issue #14).
--
-- Tags of nodes and external clients, which policies select them by:
-- comma-joined and sorted ('' when none; a tag is a DNS label, never holds
-- a comma).
ALTER TABLE nodes ADD COLUMN tags TEXT NOT NULL DEFAULT '';
ALTER TABLE ext_clients ADD COLUMN tags TEXT NOT NULL DEFAULT '';

-- At most one policy per network, as JSON (the domain's `Policy`); a
-- network without a row has the default (ALLOW, no rules). `revision` is
-- the network's config revision at which the policy last changed.
CREATE TABLE network_policies (
    network      TEXT PRIMARY KEY REFERENCES networks(name) ON DELETE CASCADE,
    policy       TEXT NOT NULL,
    revision     INTEGER NOT NULL,
    update_time  INTEGER NOT NULL
);

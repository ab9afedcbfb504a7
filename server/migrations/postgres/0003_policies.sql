-- Access policies (issue #14).
--
-- Tags of nodes and external clients, which policies select them by
-- (sorted, without duplicates).
ALTER TABLE nodes ADD COLUMN tags text[] NOT NULL DEFAULT '{}';
ALTER TABLE ext_clients ADD COLUMN tags text[] NOT NULL DEFAULT '{}';

-- At most one policy per network, as JSON (the domain's `Policy`); a
-- network without a row has the default (ALLOW, no rules). `revision` is
-- the network's config revision at which the policy last changed.
CREATE TABLE network_policies (
    network      text COLLATE "C" PRIMARY KEY REFERENCES networks(name) ON DELETE CASCADE,
    policy       jsonb NOT NULL,
    revision     bigint NOT NULL CHECK (revision >= 0),
    update_time  timestamptz NOT NULL
);

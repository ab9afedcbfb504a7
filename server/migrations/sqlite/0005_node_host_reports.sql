-- What a node's agent reports about its host (issue #11).

-- The WireGuard interface the agent manages; NULL until it reports one
-- (configs then name the default, "mp-<network>").
ALTER TABLE nodes ADD COLUMN wireguard_interface TEXT;
-- The host's interfaces and routes as JSON; NULL until the agent reports.
ALTER TABLE nodes ADD COLUMN host_report TEXT;
-- Why the last apply failed (empty when it did not), and its revision.
ALTER TABLE nodes ADD COLUMN apply_error TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN failed_revision INTEGER NOT NULL DEFAULT 0;

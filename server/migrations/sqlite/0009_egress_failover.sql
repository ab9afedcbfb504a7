-- Several gateways per egress range (issue #15): a gateway's metric,
-- preemption, hold time and the ranges it is standby for, as JSON (NULL:
-- none of them set: its ranges are its alone).
ALTER TABLE nodes ADD COLUMN egress_ha TEXT;

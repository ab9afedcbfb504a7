-- Writes whose cost does not grow with the tables.
--
-- Each range of a network as its first and last address (IPv4 as an
-- integer, IPv6 as 16 big-endian bytes, which SQLite compares bytewise), so
-- the networks a new one would overlap are found by index instead of by
-- reading every network. Filled by the store when it opens (rows written
-- before this migration have NULLs until then).
ALTER TABLE networks ADD COLUMN range4_lo INTEGER;
ALTER TABLE networks ADD COLUMN range4_hi INTEGER;
ALTER TABLE networks ADD COLUMN range6_lo BLOB;
ALTER TABLE networks ADD COLUMN range6_hi BLOB;
CREATE INDEX networks_range4_lo ON networks(range4_lo);
CREATE INDEX networks_range6_lo ON networks(range6_lo);

-- Per network and family, a host offset below which every offset is taken:
-- the search for the lowest free address starts there instead of at 1.
-- 1 is right for any table (nothing is below it); taking the offset it names
-- moves it up, freeing an offset below it moves it down.
ALTER TABLE networks ADD COLUMN free_from4 INTEGER NOT NULL DEFAULT 1;
ALTER TABLE networks ADD COLUMN free_from6 INTEGER NOT NULL DEFAULT 1;

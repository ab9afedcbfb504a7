-- Writes whose cost does not grow with the tables.
--
-- The networks a new one would overlap, found by index (`&&` on inet_ops)
-- instead of by reading every network.
CREATE INDEX networks_range4_overlap ON networks USING gist (range4 inet_ops);
CREATE INDEX networks_range6_overlap ON networks USING gist (range6 inet_ops);

-- Per network and family, a host offset below which every offset is taken:
-- the search for the lowest free address starts there instead of at 1.
-- 1 is right for any table (nothing is below it); taking the offset it names
-- moves it up, freeing an offset below it moves it down.
ALTER TABLE networks
    ADD COLUMN free_from4 bigint NOT NULL DEFAULT 1 CHECK (free_from4 >= 1),
    ADD COLUMN free_from6 bigint NOT NULL DEFAULT 1 CHECK (free_from6 >= 1);

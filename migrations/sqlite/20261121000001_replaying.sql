-- A subscription replaying the log after a reset may build its read model somewhere other than
-- where reads look (a table swapped in at the end). Until the replay has caught up with the log
-- and the handler has finished it, reads are not told the subscription has reached a position.
ALTER TABLE subscriptions ADD COLUMN replaying integer NOT NULL DEFAULT 0;

-- A subscription replaying the log after a reset may build its read model somewhere other than
-- where reads look (a table swapped in at the end). Until the replay has caught up with the log
-- and the handler has finished it, reads are not told the subscription has reached a position.
ALTER TABLE subscriptions ADD COLUMN replaying boolean NOT NULL DEFAULT false;

-- Nothing queries inside a summary's state: it is read whole and folded in Rust. `json` keeps
-- the text as written, which is cheaper to write (a replay writes every row) and to read than
-- `jsonb`'s binary form.
ALTER TABLE consultation_summaries ALTER COLUMN state TYPE json USING state::json;

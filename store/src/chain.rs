//! Tamper evidence: a hash chain per stream, sealed by a subscription and checked by
//! [`Store::verify_chain`].
//!
//! Each event's `hash` is the SHA-256 of a canonical encoding of the event — aggregate type and
//! id, sequence, event type and version, payload and metadata (JSON with object keys sorted)
//! and the previous event's hash (`prev_hash`; 64 zeros for a stream's first event). The
//! `chain` subscription computes them in log order shortly after each commit and never
//! overwrites a hash; `chain_heads` keeps each stream's last sealed sequence and hash.
//!
//! `verify` recomputes every chain and names each stream and sequence where it breaks: an
//! edited payload or metadata (its hash no longer matches), a deleted event (a gap in the
//! sequence, or a head beyond the last event), a reordered or inserted event (its previous hash
//! is not the hash of the event before it, or it was never sealed although the chain passed
//! its position).
//!
//! The guarantee and its limit: whoever can write to the database can change an event *and*
//! recompute every later hash and the stream's head; the chain shows changes made by anyone
//! who did not, and it shows them to anyone who reads the store. Anchoring would close that gap:
//! publish, now and then, a digest of all heads somewhere the database's writers cannot rewrite
//! (a trusted timestamping service, a transparency log, a write-once bucket, the auditors'
//! mailbox); a rewritten chain then no longer matches the anchored digest. Events appended by
//! hand at the end of a stream, before the chain seals them, are sealed like any other.

use std::collections::HashMap;

use futures_util::TryStreamExt as _;
use sha2::{Digest, Sha256};

use crate::subscription::{BoxFuture, Handler, HandlerError, Tx};
use crate::{Db, RecordedEvent, Store, StoreError};

/// The previous hash of a stream's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The name of the sealing subscription.
pub const CHAIN_SUBSCRIPTION: &str = "chain";

/// JSON with object keys sorted and no insignificant whitespace.
fn canonical_json(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(value) = map.get(key) {
                    canonical_json(value, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The fields an event's hash covers.
#[derive(Debug, Clone, Copy)]
pub struct Sealed<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    /// The payload as stored (JSON text).
    pub payload: &'a str,
    /// The metadata as stored (JSON text).
    pub metadata: &'a str,
}

/// An event's hash: lowercase hex SHA-256 of
/// `[aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
/// prev_hash]` as canonical JSON. Text that is not JSON is hashed as a JSON string, so it still
/// counts.
pub fn event_hash(event: &Sealed<'_>, prev_hash: &str) -> String {
    let parse = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
    };
    let encoding = serde_json::json!([
        event.aggregate_type,
        event.aggregate_id,
        event.sequence,
        event.event_type,
        event.event_version,
        parse(event.payload),
        parse(event.metadata),
        prev_hash,
    ]);
    let mut text = String::new();
    canonical_json(&encoding, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl<'a> From<&'a RecordedEvent> for Sealed<'a> {
    fn from(event: &'a RecordedEvent) -> Self {
        Self {
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            sequence: event.sequence,
            event_type: &event.event_type,
            event_version: &event.event_version,
            payload: &event.payload,
            metadata: &event.metadata,
        }
    }
}

/// The subscription that seals events into their streams' chains.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChainSealer;

type StreamKey = (String, String);

/// One sealed event to write.
struct Seal {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    prev_hash: String,
    hash: String,
}

async fn heads(
    tx: &mut Tx<'_>,
    streams: &[StreamKey],
) -> Result<HashMap<StreamKey, (i64, String)>, sqlx::Error> {
    let mut heads = HashMap::new();
    match tx {
        Tx::Postgres(conn) => {
            let types: Vec<&str> = streams.iter().map(|s| s.0.as_str()).collect();
            let ids: Vec<&str> = streams.iter().map(|s| s.1.as_str()).collect();
            let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
                "SELECT h.aggregate_type, h.aggregate_id, h.last_sequence, h.last_hash \
                   FROM chain_heads h \
                   JOIN UNNEST($1::text[], $2::text[]) AS s(t, i) \
                     ON h.aggregate_type = s.t AND h.aggregate_id = s.i",
            )
            .bind(&types)
            .bind(&ids)
            .fetch_all(&mut **conn)
            .await?;
            for (t, i, sequence, hash) in rows {
                heads.insert((t, i), (sequence, hash));
            }
        }
        Tx::Sqlite(conn) => {
            for stream in streams {
                let row: Option<(i64, String)> = sqlx::query_as(
                    "SELECT last_sequence, last_hash FROM chain_heads \
                      WHERE aggregate_type = $1 AND aggregate_id = $2",
                )
                .bind(&stream.0)
                .bind(&stream.1)
                .fetch_optional(&mut **conn)
                .await?;
                if let Some(head) = row {
                    heads.insert(stream.clone(), head);
                }
            }
        }
    }
    Ok(heads)
}

async fn write(tx: &mut Tx<'_>, seals: &[Seal]) -> Result<(), sqlx::Error> {
    if seals.is_empty() {
        return Ok(());
    }
    match tx {
        Tx::Postgres(conn) => {
            let types: Vec<&str> = seals.iter().map(|s| s.aggregate_type.as_str()).collect();
            let ids: Vec<&str> = seals.iter().map(|s| s.aggregate_id.as_str()).collect();
            let sequences: Vec<i64> = seals.iter().map(|s| s.sequence).collect();
            let prevs: Vec<&str> = seals.iter().map(|s| s.prev_hash.as_str()).collect();
            let hashes: Vec<&str> = seals.iter().map(|s| s.hash.as_str()).collect();
            sqlx::query(
                "UPDATE events SET prev_hash = u.p, hash = u.h \
                   FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[]) \
                        AS u(t, i, s, p, h) \
                  WHERE events.aggregate_type = u.t AND events.aggregate_id = u.i \
                    AND events.sequence = u.s AND events.hash IS NULL",
            )
            .bind(&types)
            .bind(&ids)
            .bind(&sequences)
            .bind(&prevs)
            .bind(&hashes)
            .execute(&mut **conn)
            .await?;
            // The last seal of each stream moves its head (only forward).
            let mut last: HashMap<(&str, &str), &Seal> = HashMap::new();
            for seal in seals {
                last.insert((&seal.aggregate_type, &seal.aggregate_id), seal);
            }
            let heads: Vec<&Seal> = last.into_values().collect();
            sqlx::query(
                "INSERT INTO chain_heads (aggregate_type, aggregate_id, last_sequence, last_hash) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[]) \
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
                    SET last_sequence = excluded.last_sequence, last_hash = excluded.last_hash \
                  WHERE chain_heads.last_sequence < excluded.last_sequence",
            )
            .bind(
                heads
                    .iter()
                    .map(|s| s.aggregate_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                heads
                    .iter()
                    .map(|s| s.aggregate_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(heads.iter().map(|s| s.sequence).collect::<Vec<_>>())
            .bind(heads.iter().map(|s| s.hash.as_str()).collect::<Vec<_>>())
            .execute(&mut **conn)
            .await?;
        }
        Tx::Sqlite(conn) => {
            for seal in seals {
                sqlx::query(
                    "UPDATE events SET prev_hash = $4, hash = $5 \
                      WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3 \
                        AND hash IS NULL",
                )
                .bind(&seal.aggregate_type)
                .bind(&seal.aggregate_id)
                .bind(seal.sequence)
                .bind(&seal.prev_hash)
                .bind(&seal.hash)
                .execute(&mut **conn)
                .await?;
                sqlx::query(
                    "INSERT INTO chain_heads (aggregate_type, aggregate_id, last_sequence, \
                                              last_hash) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
                        SET last_sequence = excluded.last_sequence, \
                            last_hash = excluded.last_hash \
                      WHERE chain_heads.last_sequence < excluded.last_sequence",
                )
                .bind(&seal.aggregate_type)
                .bind(&seal.aggregate_id)
                .bind(seal.sequence)
                .bind(&seal.hash)
                .execute(&mut **conn)
                .await?;
            }
        }
    }
    Ok(())
}

impl Handler for ChainSealer {
    fn name(&self) -> &'static str {
        CHAIN_SUBSCRIPTION
    }

    /// Sealing may trail commits by tens of milliseconds; under load that seals many commits in one transaction.
    fn linger(&self) -> std::time::Duration {
        std::time::Duration::from_millis(20)
    }

    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let mut streams: Vec<StreamKey> = events
                .iter()
                .map(|e| (e.aggregate_type.clone(), e.aggregate_id.clone()))
                .collect();
            streams.sort();
            streams.dedup();
            let mut heads = heads(tx, &streams).await?;
            let mut seals = Vec::new();
            for event in events {
                let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
                let head = heads.entry(key).or_insert_with(|| (0, GENESIS.to_owned()));
                if event.sequence <= head.0 {
                    // Sealed already (a replay): never overwritten.
                    continue;
                }
                if event.sequence != head.0 + 1 {
                    return Err(format!(
                        "stream {}/{} jumps from sequence {} to {}: the chain stops here",
                        event.aggregate_type, event.aggregate_id, head.0, event.sequence
                    )
                    .into());
                }
                let hash = event_hash(&Sealed::from(event), &head.1);
                seals.push(Seal {
                    aggregate_type: event.aggregate_type.clone(),
                    aggregate_id: event.aggregate_id.clone(),
                    sequence: event.sequence,
                    prev_hash: std::mem::replace(&mut head.1, hash.clone()),
                    hash,
                });
                head.0 = event.sequence;
            }
            write(tx, &seals).await?;
            Ok(())
        })
    }

    /// Nothing is emptied: a replay finds every event sealed and changes nothing, so that no
    /// reset can launder an edited event into a fresh chain.
    fn reset<'a>(&'a self, _tx: &'a mut Tx<'_>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Where a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub problem: String,
}

/// What [`Store::verify_chain`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub streams: u64,
    pub events: u64,
    /// Events the chain has not reached yet (committed after its checkpoint).
    pub unsealed: u64,
    pub breaks: Vec<Break>,
}

impl VerifyReport {
    pub fn intact(&self) -> bool {
        self.breaks.is_empty()
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
    prev_hash: Option<String>,
    hash: Option<String>,
    transaction_id: i64,
    position: i64,
}

#[derive(sqlx::FromRow)]
struct HeadRow {
    aggregate_type: String,
    aggregate_id: String,
    last_sequence: i64,
    last_hash: String,
}

/// The state of the stream being checked.
struct Current {
    key: StreamKey,
    /// The last event seen and its stored hash.
    last_sequence: i64,
    last_hash: Option<String>,
    /// The last event that was sealed.
    last_sealed: i64,
    last_sealed_hash: String,
}

// Both in byte order, so that the two can be merged in Rust.
const PG_EVENTS: &str = "SELECT aggregate_type, aggregate_id, sequence, event_type, \
    event_version, payload::text AS payload, metadata::text AS metadata, prev_hash, hash, \
    transaction_id::text::bigint AS transaction_id, position \
    FROM events ORDER BY aggregate_type COLLATE \"C\", aggregate_id COLLATE \"C\", sequence";
const PG_HEADS: &str = "SELECT aggregate_type, aggregate_id, last_sequence, last_hash \
    FROM chain_heads ORDER BY aggregate_type COLLATE \"C\", aggregate_id COLLATE \"C\"";
const SQLITE_EVENTS: &str = "SELECT aggregate_type, aggregate_id, sequence, event_type, \
    event_version, payload, metadata, prev_hash, hash, 0 AS transaction_id, position \
    FROM events ORDER BY aggregate_type, aggregate_id, sequence";
const SQLITE_HEADS: &str = "SELECT aggregate_type, aggregate_id, last_sequence, last_hash \
    FROM chain_heads ORDER BY aggregate_type, aggregate_id";

impl Store {
    /// Recomputes every stream's chain, streaming the events in stream order (constant
    /// memory), and reports each break. `progress(done, total)` is called every 10,000 events
    /// and at the end.
    pub async fn verify_chain(
        &self,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<VerifyReport, StoreError> {
        let total: i64 = with_pool!(&self.db, pool => {
            sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await?
        });
        let total = u64::try_from(total).unwrap_or(0);
        // Events the sealer has passed must be sealed.
        // (Its own row only: the status of every subscription would count their lag too.)
        let tx_out = match &self.db {
            Db::Postgres(_) => "transaction_id::text::bigint",
            Db::Sqlite(_) => "transaction_id",
        };
        let sql = format!("SELECT {tx_out}, position FROM subscriptions WHERE name = $1");
        let checkpoint: Option<(i64, i64)> = with_pool!(&self.db, pool => {
            sqlx::query_as(&sql).bind(CHAIN_SUBSCRIPTION).fetch_optional(pool).await?
        });
        let mut report = VerifyReport::default();
        let mut walk = Walk {
            report: &mut report,
            checkpoint,
            progress: &mut progress,
            total,
        };
        match &self.db {
            Db::Postgres(pool) => {
                walk.run(
                    sqlx::query_as::<_, Row>(PG_EVENTS).fetch(pool),
                    sqlx::query_as::<_, HeadRow>(PG_HEADS).fetch(pool),
                )
                .await?;
            }
            Db::Sqlite(pool) => {
                walk.run(
                    sqlx::query_as::<_, Row>(SQLITE_EVENTS).fetch(pool),
                    sqlx::query_as::<_, HeadRow>(SQLITE_HEADS).fetch(pool),
                )
                .await?;
            }
        }
        progress(report.events, total);
        Ok(report)
    }
}

/// One pass over all events in stream order, merged with the heads.
struct Walk<'a, P> {
    report: &'a mut VerifyReport,
    /// The sealer's checkpoint: events at or before it must be sealed.
    checkpoint: Option<(i64, i64)>,
    progress: &'a mut P,
    total: u64,
}

impl<P: FnMut(u64, u64)> Walk<'_, P> {
    async fn run<E, H>(&mut self, mut events: E, mut heads: H) -> Result<(), sqlx::Error>
    where
        E: futures_util::Stream<Item = Result<Row, sqlx::Error>> + Unpin,
        H: futures_util::Stream<Item = Result<HeadRow, sqlx::Error>> + Unpin,
    {
        let mut next_head = heads.try_next().await?;
        let mut current: Option<Current> = None;
        while let Some(row) = events.try_next().await? {
            let key = (row.aggregate_type.clone(), row.aggregate_id.clone());
            if current.as_ref().is_none_or(|c| c.key != key) {
                if let Some(done) = current.take() {
                    self.end_stream(done, &mut next_head, &mut heads).await?;
                }
                current = Some(Current {
                    key,
                    last_sequence: 0,
                    last_hash: Some(GENESIS.to_owned()),
                    last_sealed: 0,
                    last_sealed_hash: GENESIS.to_owned(),
                });
            }
            let passed = self
                .checkpoint
                .is_some_and(|checkpoint| (row.transaction_id, row.position) <= checkpoint);
            if let Some(stream) = current.as_mut() {
                check_row(self.report, stream, &row, passed);
            }
            self.report.events += 1;
            if self.report.events.is_multiple_of(10_000) {
                (self.progress)(self.report.events, self.total);
            }
        }
        if let Some(done) = current.take() {
            self.end_stream(done, &mut next_head, &mut heads).await?;
        }
        // Heads after the last stream with events: streams deleted whole.
        while let Some(head) = next_head.take() {
            orphaned(self.report, head);
            next_head = heads.try_next().await?;
        }
        Ok(())
    }

    async fn end_stream<H>(
        &mut self,
        done: Current,
        next_head: &mut Option<HeadRow>,
        heads: &mut H,
    ) -> Result<(), sqlx::Error>
    where
        H: futures_util::Stream<Item = Result<HeadRow, sqlx::Error>> + Unpin,
    {
        self.report.streams += 1;
        // Heads before this stream belong to streams with no events left.
        let head = loop {
            match next_head.take() {
                Some(head)
                    if (head.aggregate_type.as_str(), head.aggregate_id.as_str())
                        < (done.key.0.as_str(), done.key.1.as_str()) =>
                {
                    orphaned(self.report, head);
                    *next_head = heads.try_next().await?;
                }
                Some(head)
                    if head.aggregate_type == done.key.0 && head.aggregate_id == done.key.1 =>
                {
                    *next_head = heads.try_next().await?;
                    break Some(head);
                }
                other => {
                    *next_head = other;
                    break None;
                }
            }
        };
        close_stream(self.report, &done, head);
        Ok(())
    }
}

fn broken(report: &mut VerifyReport, key: &StreamKey, sequence: i64, problem: impl Into<String>) {
    report.breaks.push(Break {
        aggregate_type: key.0.clone(),
        aggregate_id: key.1.clone(),
        sequence,
        problem: problem.into(),
    });
}

fn orphaned(report: &mut VerifyReport, head: HeadRow) {
    report.breaks.push(Break {
        aggregate_type: head.aggregate_type,
        aggregate_id: head.aggregate_id,
        sequence: 1,
        problem: format!(
            "all {} sealed events of the stream are missing (deleted)",
            head.last_sequence
        ),
    });
}

/// Compares a finished stream with its head.
fn close_stream(report: &mut VerifyReport, stream: &Current, head: Option<HeadRow>) {
    let Some(head) = head else {
        if stream.last_sealed > 0 {
            broken(
                report,
                &stream.key,
                stream.last_sealed,
                "the stream's head is missing",
            );
        }
        return;
    };
    if head.last_sequence > stream.last_sequence {
        broken(
            report,
            &stream.key,
            stream.last_sequence + 1,
            format!(
                "events {} to {} were sealed and are missing (deleted)",
                stream.last_sequence + 1,
                head.last_sequence
            ),
        );
    } else if head.last_sequence == stream.last_sealed && head.last_hash != stream.last_sealed_hash
    {
        broken(
            report,
            &stream.key,
            stream.last_sealed,
            "the newest sealed event is not the one the stream's head recorded",
        );
    }
}

/// Checks one event against the one before it in its stream.
fn check_row(report: &mut VerifyReport, stream: &mut Current, row: &Row, passed: bool) {
    let key = stream.key.clone();
    if row.sequence != stream.last_sequence + 1 {
        broken(
            report,
            &key,
            row.sequence,
            format!(
                "sequence {} follows {}: events in between are missing (deleted)",
                row.sequence, stream.last_sequence
            ),
        );
    }
    match (&row.hash, &row.prev_hash) {
        (Some(hash), Some(prev)) => {
            if Some(prev) != stream.last_hash.as_ref() {
                broken(
                    report,
                    &key,
                    row.sequence,
                    "does not follow the event before it (inserted, reordered or deleted)",
                );
            }
            let recomputed = event_hash(
                &Sealed {
                    aggregate_type: &row.aggregate_type,
                    aggregate_id: &row.aggregate_id,
                    sequence: row.sequence,
                    event_type: &row.event_type,
                    event_version: &row.event_version,
                    payload: &row.payload,
                    metadata: &row.metadata,
                },
                prev,
            );
            if &recomputed != hash {
                broken(
                    report,
                    &key,
                    row.sequence,
                    "altered since it was sealed (its hash does not match its content)",
                );
            }
            stream.last_sealed = row.sequence;
            stream.last_sealed_hash = hash.clone();
        }
        _ if passed => broken(
            report,
            &key,
            row.sequence,
            "not sealed although the chain has passed it (inserted, or its hash removed)",
        ),
        _ => report.unsealed += 1,
    }
    stream.last_sequence = row.sequence;
    stream.last_hash = row.hash.clone();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(payload: &'a str, metadata: &'a str) -> Sealed<'a> {
        Sealed {
            aggregate_type: "consultation",
            aggregate_id: "c-1",
            sequence: 1,
            event_type: "Booked",
            event_version: "1.0",
            payload,
            metadata,
        }
    }

    #[test]
    fn the_hash_covers_every_field_and_ignores_key_order_and_spacing() {
        let base = event_hash(&event(r#"{"a":1,"b":[1,2]}"#, r#"{"m":"x"}"#), GENESIS);
        assert_eq!(base.len(), 64);
        assert_eq!(
            base,
            event_hash(
                &event(r#"{ "b": [1, 2], "a": 1 }"#, r#"{"m": "x"}"#),
                GENESIS
            ),
            "the same JSON however it is rendered"
        );
        assert_ne!(
            base,
            event_hash(&event(r#"{"a":2,"b":[1,2]}"#, r#"{"m":"x"}"#), GENESIS)
        );
        assert_ne!(
            base,
            event_hash(&event(r#"{"a":1,"b":[2,1]}"#, r#"{"m":"x"}"#), GENESIS)
        );
        assert_ne!(
            base,
            event_hash(&event(r#"{"a":1,"b":[1,2]}"#, r#"{"m":"y"}"#), GENESIS)
        );
        assert_ne!(
            base,
            event_hash(
                &event(r#"{"a":1,"b":[1,2]}"#, r#"{"m":"x"}"#),
                &"1".repeat(64)
            )
        );
        let mut other = event(r#"{"a":1,"b":[1,2]}"#, r#"{"m":"x"}"#);
        other.sequence = 2;
        assert_ne!(base, event_hash(&other, GENESIS));
        other.sequence = 1;
        other.event_version = "2.0";
        assert_ne!(base, event_hash(&other, GENESIS));
    }

    #[test]
    fn a_known_answer() {
        // sha256 of ["consultation","c-1",1,"Booked","1.0",{"a":1},{},"000…0"] as written.
        let hash = event_hash(&event(r#"{"a":1}"#, "{}"), GENESIS);
        let text = format!(r#"["consultation","c-1",1,"Booked","1.0",{{"a":1}},{{}},"{GENESIS}"]"#);
        let expected: String = Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hash, expected);
    }
}

//! The schema and statements of the PostgreSQL backend (COMPAT.md §4.3.1,
//! §4.3.2). Names of prepared statements are not shared with other
//! processes; their semantics are.

use tokio_postgres::{Client, Statement};

/// NOTIFY payloads must be shorter than this many bytes (server default).
pub const NOTIFY_PAYLOAD_LIMIT: usize = 8000;

/// Key of the advisory lock serialising table creation (§9 Q12).
const SCHEMA_LOCK: i64 = 0x6d62_5f73_6368;

/// Creates the table and its indexes if missing, with exactly the reference
/// schema. An advisory lock makes concurrent first connections safe.
pub fn create_schema_sql() -> String {
    format!(
        "BEGIN;
SELECT pg_advisory_xact_lock({SCHEMA_LOCK});
CREATE TABLE IF NOT EXISTS message_bus (
  id bigserial PRIMARY KEY,
  channel text NOT NULL,
  value text NOT NULL CHECK (octet_length(value) >= 2),
  added_at timestamp DEFAULT CURRENT_TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS table_channel_id_index ON message_bus (channel, id);
CREATE INDEX IF NOT EXISTS table_added_at_index ON message_bus (added_at);
COMMIT;"
    )
}

/// Drops and recreates the table (ids restart at 1).
pub fn reset_sql() -> String {
    format!(
        "BEGIN;
SELECT pg_advisory_xact_lock({SCHEMA_LOCK});
DROP TABLE IF EXISTS message_bus;
COMMIT;
{}",
        create_schema_sql()
    )
}

pub const TABLE_EXISTS: &str = "SELECT to_regclass('message_bus') IS NOT NULL";

/// Key of the advisory lock serialising the creation of the epoch.
const EPOCH_LOCK: i64 = 0x6d62_5f65_706f;
/// The storage epoch is the comment of the `message_bus` table, so that it
/// lives and dies with the table: a table dropped and recreated (by `reset!`
/// of either gem, or by hand) has none, and the first of our processes to
/// look creates a new one. Reference processes never read it.
pub const EPOCH_PREFIX: &str = "message_bus epoch ";
pub const READ_EPOCH: &str = "SELECT obj_description('message_bus'::regclass, 'pg_class')";

/// Records `epoch` (hex) as the table's epoch unless it has one already.
pub fn create_epoch_sql(epoch: &str) -> String {
    let hex: String = epoch
        .chars()
        .filter(|c| c.is_ascii_digit() || ('a'..='f').contains(c))
        .collect();
    format!(
        "DO $$ BEGIN
PERFORM pg_advisory_xact_lock({EPOCH_LOCK});
IF coalesce(obj_description('message_bus'::regclass, 'pg_class'), '') !~ '^{EPOCH_PREFIX}[0-9a-f]+$' THEN
  COMMENT ON TABLE message_bus IS '{EPOCH_PREFIX}{hex}';
END IF;
END $$"
    )
}

/// The epoch in a table comment, if it is one of ours.
pub fn parse_epoch(comment: Option<&str>) -> Option<&str> {
    let epoch = comment?.strip_prefix(EPOCH_PREFIX)?;
    crate::backend::epoch::is_valid(epoch).then_some(epoch)
}

/// A whole publish (§4.3.4) in one statement (the `publish_all` of
/// [`WriteStatements`], and the direct path's publish). The trimming parts run on
/// the statement's snapshot, without the new row: the channel keeps the new
/// row and the `keep - 1` newest before it. $1 channel, $2 value, $3 NOTIFY
/// channel, $4 payload after the ids, $5 clear_every, $6 global size, $7 age,
/// $8 keep (>= 1), $9 the id at or below which rows are known to be deleted
/// already (0: no bound). Without the bound every DELETE walks, from the
/// low end of its index, the entries of all the rows deleted since
/// the last vacuum: trimming on every publish then costs more than
/// the publish (COMPAT.md §4.3.4 keeps every row below the global
/// window deleted, so the bound changes nothing but the scan). Not
/// on the age DELETE: its added_at index scan stops at the first
/// live row, while an id bound makes it read the whole window.
/// The search for the channel's cut is bounded too (walking down
/// the channel's entries, it would otherwise read those of all its
/// deleted rows when the channel has fewer than `keep` rows): if
/// fewer than `keep` rows are above the bound, the cut is at or
/// below it, and the DELETE between the two would delete nothing.
pub const PUBLISH_ALL: &str = "WITH inserted AS (INSERT INTO message_bus (channel, value) VALUES ($1::text, $2::text) RETURNING id), \
     notified AS (SELECT id, pg_notify($3::text, id::text || '|' || id::text || '|' || $4::text) FROM inserted), \
     trim_global AS (DELETE FROM message_bus WHERE (SELECT id FROM inserted) % $5::bigint = 0 \
       AND id > $9::bigint AND id <= (SELECT id FROM inserted) - $6::bigint), \
     expired AS (DELETE FROM message_bus WHERE (SELECT id FROM inserted) % $5::bigint = 0 \
       AND added_at < CURRENT_TIMESTAMP - ($7::text)::interval), \
     trim_channel AS (DELETE FROM message_bus WHERE (SELECT id FROM inserted) % $5::bigint = 0 \
       AND channel = $1::text AND id > $9::bigint AND id <= (SELECT id FROM message_bus WHERE channel = $1::text \
         AND id > $9::bigint ORDER BY id DESC LIMIT 1 OFFSET $8::bigint - 1)) \
     SELECT id FROM notified";

/// The highest id of a channel (NULL: none).
pub const MAX_CHANNEL_ID: &str = "SELECT max(id) FROM message_bus WHERE channel = $1::text";

/// The highest id of each of the channels that has rows.
pub const MAX_CHANNEL_IDS: &str =
    "SELECT channel, max(id) FROM message_bus WHERE channel = ANY($1::text[]) GROUP BY channel";

/// A channel's rows after an id, in order.
pub const CHANNEL_BACKLOG: &str =
    "SELECT id, value FROM message_bus WHERE channel = $1::text AND id > $2::bigint ORDER BY id";

/// The read statements of one pooled connection, prepared when it opens.
/// Preparing a statement takes the locks its execution will (parse
/// analysis): a write's would make a read wait behind a lock on the table.
pub struct ReadStatements {
    pub channel_backlog: Statement,
    pub global_backlog: Statement,
    pub get_message: Statement,
    pub max_channel_id: Statement,
    pub max_channel_ids: Statement,
    pub max_id: Statement,
}

impl ReadStatements {
    pub async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(ReadStatements {
            channel_backlog: client.prepare(CHANNEL_BACKLOG).await?,
            global_backlog: client
                .prepare(
                    "SELECT id, channel, value FROM message_bus WHERE id > $1::bigint ORDER BY id",
                )
                .await?,
            get_message: client
                .prepare(
                    "SELECT value FROM message_bus WHERE channel = $1::text AND id = $2::bigint",
                )
                .await?,
            max_channel_id: client.prepare(MAX_CHANNEL_ID).await?,
            max_channel_ids: client.prepare(MAX_CHANNEL_IDS).await?,
            max_id: client.prepare("SELECT max(id) FROM message_bus").await?,
        })
    }
}

/// The write statements of one pooled connection, prepared on its first
/// write (see [`ReadStatements`]).
pub struct WriteStatements {
    pub insert_message: Statement,
    pub insert_and_notify: Statement,
    pub publish_all: Statement,
    pub publish_batch: Statement,
    pub trim: Statement,
    pub publish: Statement,
}

impl WriteStatements {
    pub async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(WriteStatements {
            insert_message: client
                .prepare("INSERT INTO message_bus (channel, value) VALUES ($1::text, $2::text) RETURNING id")
                .await?,
            // One round trip and one commit for both steps of a publish:
            // the NOTIFY is sent when the row commits (§4.3.4).
            insert_and_notify: client
                .prepare(
                    "WITH inserted AS (INSERT INTO message_bus (channel, value) VALUES ($1::text, $2::text) RETURNING id) \
                     SELECT id, pg_notify($3::text, id::text || '|' || id::text || '|' || $4::text) FROM inserted",
                )
                .await?,
            publish_all: client.prepare(PUBLISH_ALL).await?,
            // Several publishes in one statement and one commit (group
            // commit, see `batch.rs`), with exactly the rows, NOTIFYs and
            // trimming of running `publish_all` for each in turn.
            // $1 channels, $2 values, $3 escaped channels (text[], one entry
            // per publish), $4 NOTIFY channel, $5 clear_every, $6 global
            // size, $7 age, $8 keep (>= 1), $9 trim floor (as `publish_all`).
            // Returns (ordinality, id): ids are taken in array order.
            //
            // Trimming: publish i trims when its id is a multiple of
            // clear_every. Done in turn, the global DELETEs amount to the one
            // of the highest such id (`top`), the age DELETE to one, and the
            // channel DELETEs of channel C to the one of C's highest such id
            // `k`: keep the newest `keep` rows of C up to `k`. The batch's
            // own rows are not in the statement's snapshot, so the DELETEs
            // only remove older rows (C keeps `keep - m` of them, m = the
            // batch's rows of C up to `k`), and a batch row that trimming in
            // turn would delete is not inserted at all: inserting and
            // deleting it in the same transaction would be invisible to
            // everyone else. Its id is taken and NOTIFYed like any other.
            // The NOTIFYs are sent in id order (the sorted subquery below),
            // which is the order listeners receive them in.
            publish_batch: client
                .prepare(
                    "WITH numbered AS (\
                       SELECT t.n, t.c, t.v, t.e, nextval('message_bus_id_seq') AS id \
                       FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(c, v, e, n) \
                       ORDER BY t.n), \
                     marked AS (\
                       SELECT c, v, id, \
                         max(id) FILTER (WHERE id % $5::bigint = 0) OVER (PARTITION BY c) AS k, \
                         max(id) FILTER (WHERE id % $5::bigint = 0) OVER () AS top \
                       FROM numbered), \
                     ranked AS (\
                       SELECT c, v, id, k, top, \
                         count(*) FILTER (WHERE id <= k) OVER (PARTITION BY c ORDER BY id DESC) AS newer, \
                         count(*) FILTER (WHERE id <= k) OVER (PARTITION BY c) AS m \
                       FROM marked), \
                     inserted AS (\
                       INSERT INTO message_bus (id, channel, value) \
                       SELECT id, c, v FROM ranked \
                       WHERE NOT ((top IS NOT NULL AND id <= top - $6::bigint) OR (id <= k AND newer > $8::bigint)) \
                       ORDER BY id), \
                     notified AS (\
                       SELECT n, id, pg_notify($4::text, id::text || '|' || id::text || '|' || e || '|' || v) \
                       FROM (SELECT n, id, e, v FROM numbered ORDER BY id) ordered), \
                     trim_global AS (\
                       DELETE FROM message_bus WHERE id > $9::bigint \
                       AND id <= (SELECT max(top) FROM ranked) - $6::bigint), \
                     expired AS (\
                       DELETE FROM message_bus WHERE EXISTS (SELECT 1 FROM ranked WHERE top IS NOT NULL) \
                       AND added_at < CURRENT_TIMESTAMP - ($7::text)::interval), \
                     cuts AS (\
                       SELECT r.c, (SELECT x.id FROM message_bus x WHERE x.channel = r.c AND x.id > $9::bigint \
                         ORDER BY x.id DESC LIMIT 1 OFFSET greatest($8::bigint - r.m, 0)) AS cut \
                       FROM (SELECT DISTINCT c, m FROM ranked WHERE k IS NOT NULL) r), \
                     trim_channel AS (\
                       DELETE FROM message_bus b USING cuts \
                       WHERE b.channel = cuts.c AND b.id > $9::bigint AND b.id <= cuts.cut) \
                     SELECT n, id FROM notified",
                )
                .await?,
            trim: client
                .prepare(
                    "WITH global AS (DELETE FROM message_bus WHERE id <= $1::bigint), \
                     expired AS (DELETE FROM message_bus WHERE added_at < CURRENT_TIMESTAMP - ($2::text)::interval), \
                     channel AS (DELETE FROM message_bus WHERE channel = $3::text AND id <= \
                       (SELECT id FROM message_bus WHERE channel = $3::text AND id <= $4::bigint \
                        ORDER BY id DESC LIMIT 1 OFFSET $5::bigint)) \
                     SELECT 1",
                )
                .await?,
            publish: client
                .prepare("SELECT pg_notify($1::text, $2::text)")
                .await?,
        })
    }
}

/// `LISTEN "<channel>"` with the identifier quoted.
pub fn listen_sql(channel: &str) -> String {
    format!("LISTEN \"{}\"", channel.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_table_comments() {
        assert_eq!(parse_epoch(Some("message_bus epoch 0af3")), Some("0af3"));
        assert_eq!(parse_epoch(Some("message_bus epoch ")), None);
        assert_eq!(parse_epoch(Some("the bus table")), None);
        assert_eq!(parse_epoch(None), None);
        let sql = create_epoch_sql("ab'; DROP TABLE x; --12");
        assert!(sql.contains("IS 'message_bus epoch ab12'"), "{sql}");
    }

    #[test]
    fn listen_quotes_the_channel() {
        assert_eq!(listen_sql("_message_bus_0"), "LISTEN \"_message_bus_0\"");
        assert_eq!(listen_sql("a\"b"), "LISTEN \"a\"\"b\"");
    }
}

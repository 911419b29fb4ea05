//! The PostgreSQL backend (cargo feature `postgres`): one database shared
//! by several instances of the bot, each with a lease, each chat owned by
//! one instance at a time, every write to a chat fenced on that ownership.
//! The protocol is in supervision.md, "Running several instances"; this
//! module is its SQL.
//!
//! - **Runs on** the store's writer thread, like fjall: [`PgBackend`] is a
//!   [`Backend`] on the blocking `postgres` client (one connection). A
//!   group commit is one statement in the common case (admissions and
//!   turns: one round trip, one WAL flush), else one transaction
//!   ([`PgGroup`]); a batch's chat loads are one claim, and their
//!   unanswered updates one read. Statements are prepared once per
//!   connection and planned generically. The cluster actor
//!   (`actors/root/cluster.rs`) has its own connection for leases, sweeps
//!   and `LISTEN/NOTIFY`, through the functions below that take a client.
//! - **Records** are stored exactly as fjall stores them: the versioned
//!   bincode encodings of [`super::record`], one `bytea` each, so both
//!   backends read and write one format and a record's schema version
//!   stays inside it. Keys are [`super::session_key`] bytes.
//! - **Tables** (migrations 1–2, `llmgram_schema` holds the version): every
//!   row carries the bot's id, so several bots can share a database.
//!   `llmgram_instances` (a row per process start, with its lease),
//!   `llmgram_chats` (record, what a forgotten chat spent, and the owner),
//!   `llmgram_updates` (received updates: pending with their encoding and
//!   admission number from a sequence, or answered), `llmgram_settings`,
//!   `llmgram_failed` (records that did not decode).
//! - **Ownership:** loading a chat takes it ([`Backend::load_chat`]): an
//!   instance may take a chat that is new, unowned, its own, or whose
//!   owner's lease lapsed more than `storage.postgres.grace` ago, judged on
//!   the database's clock. Otherwise the load fails with
//!   [`StoreError::Fenced`] and the owner is notified to answer what is
//!   waiting. Every turn's commit is conditional on still owning the chat;
//!   if it does not, nothing of that turn is written and it fails with
//!   [`StoreError::Fenced`] (the other turns of the group go on).
//! - **Durability:** a commit is durable when PostgreSQL says so:
//!   `storage.persist_mode = "Buffer"` sets `synchronous_commit = off` (a
//!   database crash may lose the last commits, a bot crash none), the others
//!   `on`. Across a database failover, only a synchronous standby keeps
//!   every acknowledged commit (deploy/postgresql.md).
//! - **Failures:** a statement that fails aborts the group's transaction, so
//!   the whole group fails (its callers are told; the webhook answers 500
//!   and Telegram sends again) and the writer goes on; a lost connection is
//!   opened again at the next group. Nothing here poisons the store.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

use super::backend::{Backend, Committed};
use super::backup::{BackupError, BackupReport};
use super::record::{self, BotSetting, ChatRecord, UpdateEntry};
use super::writer::RecordChange;
use super::{BotKey, StoreError, chat_key, session_key};
use crate::config::{PersistModeConfig, PostgresConfig, StorageConfig};
use crate::telegram::inbound::{Inbound, SessionKey};

/// The schema version this build writes; a database at a newer one is
/// refused (an older build must not write a newer schema).
pub const SCHEMA_VERSION: i32 = 2;

/// The migrations, in order: each takes the schema from the version before
/// it to its own. Never edit one that has shipped; add the next.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE llmgram_instances (
        id bigserial PRIMARY KEY,
        host text NOT NULL,
        pid integer NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        lease_until timestamptz NOT NULL
    );
    CREATE TABLE llmgram_chats (
        bot bigint NOT NULL,
        key bytea NOT NULL,
        record bytea,
        usage bytea,
        owner bigint,
        PRIMARY KEY (bot, key)
    );
    CREATE INDEX llmgram_chats_owner ON llmgram_chats (owner) WHERE owner IS NOT NULL;
    CREATE SEQUENCE llmgram_admission;
    CREATE TABLE llmgram_updates (
        bot bigint NOT NULL,
        update_id bigint NOT NULL,
        admitted bigint NOT NULL DEFAULT nextval('llmgram_admission'),
        admitted_at timestamptz NOT NULL DEFAULT now(),
        admitted_by bigint,
        key bytea NOT NULL,
        entry bytea,
        answered boolean NOT NULL DEFAULT false,
        PRIMARY KEY (bot, update_id)
    );
    CREATE INDEX llmgram_updates_pending ON llmgram_updates (bot, admitted) WHERE NOT answered;
    CREATE INDEX llmgram_updates_pending_by_chat ON llmgram_updates (bot, key) WHERE NOT answered;
    CREATE TABLE llmgram_settings (
        bot bigint NOT NULL,
        name text NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (bot, name)
    );
    CREATE TABLE llmgram_failed (
        id bigserial PRIMARY KEY,
        bot bigint NOT NULL,
        kind text NOT NULL,
        key bytea NOT NULL,
        value bytea NOT NULL,
        at timestamptz NOT NULL DEFAULT now()
    );",
    ),
    // An update is found by its id (markers, duplicates): with the id first
    // in the key, every plan looks it up in the index, whatever the
    // statistics say (`bot` first let a plan made before the first ANALYZE
    // read every row of the bot and filter the ids). A chat's record is
    // rewritten at every turn: room left in each page lets the new version
    // stay on it without touching the indexes (a HOT update).
    (
        2,
        "ALTER TABLE llmgram_updates DROP CONSTRAINT llmgram_updates_pkey,
            ADD PRIMARY KEY (update_id, bot);
         ALTER TABLE llmgram_chats SET (fillfactor = 70);",
    ),
];

/// Serialises migrations of concurrently starting instances (an arbitrary
/// constant: `pg_advisory_xact_lock` takes any 64-bit key).
const MIGRATION_LOCK: i64 = 0x6c6c_6d67_7261_6d00;

/// The notification channel of bot-wide settings: the payload is
/// `<bot>:<name>` of the setting an instance changed.
pub const SETTINGS_CHANNEL: &str = "llmgram_settings";

/// The notification channel of one instance: another instance that
/// received an update for a chat this one owns says so here.
pub fn channel(instance: i64) -> String {
    format!("llmgram_instance_{instance}")
}

/// Seconds as PostgreSQL's `make_interval(secs => …)` takes them.
fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// A statement's error as a store error: the cause chain, never the URL.
fn storage(error: postgres::Error) -> StoreError {
    StoreError::Storage(crate::error::error_chain(&error))
}

fn codec(error: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(error.to_string())
}

/// The connection settings of `url` with this deployment's timeouts:
/// connecting within `connect_timeout`, statements within
/// `statement_timeout`, TCP keepalives so a vanished database is noticed,
/// and the commit durability of `mode`.
pub fn connection_config(
    url: &str,
    config: &PostgresConfig,
    mode: PersistModeConfig,
) -> Result<tokio_postgres::Config, StoreError> {
    let mut settings: tokio_postgres::Config = url.parse().map_err(|e: postgres::Error| {
        // The parse error names the bad part, not the URL (which may carry
        // a password).
        StoreError::Storage(format!("storage.postgres.url does not parse: {e}"))
    })?;
    let synchronous = match mode {
        PersistModeConfig::Buffer => "off",
        PersistModeConfig::SyncAll | PersistModeConfig::SyncData => "on",
    };
    settings
        .connect_timeout(config.connect_timeout)
        // A database cut off silently (a partition drops packets; nothing
        // closes the connection) must fail a statement in seconds, not
        // after TCP's retransmissions (about 15 minutes): data unacked for
        // the statement timeout ends the connection, and an idle one is
        // probed every second after 5 s of silence, 3 times.
        .tcp_user_timeout(config.statement_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(3)
        .application_name("llmgram")
        // Statements are prepared once per connection and run with a
        // generic plan: planning a group's statement anew at each run (a
        // custom plan) cost more than running it.
        .options(format!(
            "-c statement_timeout={} -c synchronous_commit={synchronous} \
             -c plan_cache_mode=force_generic_plan",
            config.statement_timeout.as_millis()
        ));
    Ok(settings)
}

/// What [`migrate`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// The schema version before (0: a database llmgram never used).
    pub from: i32,
    /// The schema version now: [`SCHEMA_VERSION`].
    pub to: i32,
}

/// Brings the database to [`SCHEMA_VERSION`] in one transaction, holding
/// an advisory lock so instances starting together migrate once. A
/// database at a newer version is refused.
pub fn migrate(client: &mut Client) -> Result<Migration, StoreError> {
    let mut tx = client.transaction().map_err(storage)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(storage)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS llmgram_schema (version integer NOT NULL)")
        .map_err(storage)?;
    let from: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM llmgram_schema", &[])
        .map_err(storage)?
        .get(0);
    if from > SCHEMA_VERSION {
        return Err(StoreError::Storage(format!(
            "the database's schema is version {from}, newer than this build's {SCHEMA_VERSION}: \
             run a newer llmgram"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > from) {
        tx.batch_execute(sql).map_err(storage)?;
        tx.execute(
            "INSERT INTO llmgram_schema (version) VALUES ($1)",
            &[version],
        )
        .map_err(storage)?;
        tracing::info!(version, "database schema migrated");
    }
    tx.commit().map_err(storage)?;
    Ok(Migration {
        from,
        to: SCHEMA_VERSION,
    })
}

/// The database's schema version without changing anything (`llmgram
/// check-config`); 0 when llmgram never used it.
pub fn schema_version(client: &mut Client) -> Result<i32, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('llmgram_schema') IS NOT NULL", &[])
        .map_err(storage)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one("SELECT coalesce(max(version), 0) FROM llmgram_schema", &[])
        .map_err(storage)?
        .get(0))
}

/// The schema version of the database at `url` (after migrating it to
/// [`SCHEMA_VERSION`] when `migrate`): `from` is the version found, `to`
/// the version now. Blocking; for `llmgram check-config` and `llmgram
/// migrate`, never inside the async runtime.
pub fn schema_report(
    url: &str,
    storage_config: &StorageConfig,
    migrate: bool,
) -> Result<Migration, StoreError> {
    let settings = postgres::Config::from(connection_config(
        url,
        &storage_config.postgres,
        storage_config.persist_mode,
    )?);
    let mut client = settings.connect(NoTls).map_err(storage)?;
    if migrate {
        return self::migrate(&mut client);
    }
    let version = schema_version(&mut client)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Storage(format!(
            "the database's schema is version {version}, newer than this build's {SCHEMA_VERSION}"
        )));
    }
    Ok(Migration {
        from: version,
        to: version,
    })
}

/// Registers a new instance with a lease of `lease` from now (database
/// time); returns its id. Each process start gets a fresh id: an instance
/// that lost its lease never comes back under the old one.
pub fn register(client: &mut Client, lease: Duration) -> Result<i64, StoreError> {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let row = client
        .query_one(
            "INSERT INTO llmgram_instances (host, pid, lease_until)
             VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING id",
            &[&host, &pid, &secs(lease)],
        )
        .map_err(storage)?;
    Ok(row.get(0))
}

/// The bot id a store is keyed by: the numeric prefix of the bot token
/// (`123456:ABC…`), which is the bot's user id; 0 without a token (the
/// console front).
pub fn bot_id(token: Option<&str>) -> i64 {
    token
        .and_then(|token| token.split(':').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or(0)
}

/// The PostgreSQL database as the writer's [`Backend`].
pub struct PgBackend {
    client: Client,
    /// To connect again after the connection was lost.
    settings: postgres::Config,
    /// The bot whose rows these are.
    bot: i64,
    /// This process's instance id: the owner every commit is fenced on.
    me: i64,
    /// `storage.postgres.grace`: how long after a lease lapsed its chats
    /// may be taken.
    grace: Duration,
    /// Updates below this id have been confirmed to Telegram and their
    /// answered markers removed (long polling only).
    pruned_below: u32,
    /// The turns of the last committed group that were fenced, until the
    /// writer takes them.
    fenced: Vec<usize>,
    /// The updates of the last committed group already held, until the
    /// writer takes them.
    known: Vec<u32>,
    /// Statements prepared on this connection, by their text.
    prepared: HashMap<&'static str, Statement>,
}

/// One group commit on PostgreSQL. Admissions and turns wait in the group
/// and are written together by one statement ([`WRITE_GROUP`]): at commit,
/// alone and in autocommit, one round trip and one WAL flush for the
/// whole group (the common case: webhooks or polling admitting, sessions
/// committing turns, polling confirming offsets); or, when the group also
/// holds a write that statement does not cover (`/forget`, a setting, a
/// release), inside an explicit transaction opened by that write, before
/// it.
#[derive(Debug, Default)]
pub struct PgGroup {
    /// An explicit transaction is open.
    open: bool,
    /// The first statement that failed: the transaction is aborted, so the
    /// whole group fails at commit.
    failed: Option<StoreError>,
    /// Update ids admitted earlier in the group (each is written once).
    admitted_now: HashSet<u32>,
    /// Admissions not yet written.
    admits: Vec<DeferredAdmit>,
    /// Turns added and not yet written.
    turns: Vec<DeferredTurn>,
    /// Answered markers to remove, `[from, below)`, not yet written (a
    /// confirmed offset).
    prune: Option<(i64, i64)>,
    /// How many `commit_turn` calls the group has had.
    next_turn: usize,
    /// The numbers of the group's turns found fenced.
    fenced: Vec<usize>,
    /// Admitted updates the store already held (received before this
    /// group): found when the admissions are written.
    known: Vec<u32>,
}

/// An update waiting to be admitted with the rest of its group.
#[derive(Debug)]
struct DeferredAdmit {
    update_id: i64,
    /// The conversation's [`session_key`].
    key: Vec<u8>,
    /// Its pending [`UpdateEntry`], encoded.
    entry: Vec<u8>,
}

/// A turn waiting to be written with the rest of its group.
#[derive(Debug)]
struct DeferredTurn {
    /// Its number among the group's `commit_turn` calls.
    index: usize,
    /// The conversation's [`session_key`].
    key: Vec<u8>,
    /// `Some(record)` replaces it (`None` inside: deletes it); `None`
    /// keeps it.
    change: Option<Option<Vec<u8>>>,
    answered: Vec<i64>,
    gone: Vec<i64>,
}

/// A group's admissions and turns in one statement, so a group costs one
/// round trip: the updates admitted (`ON CONFLICT DO NOTHING`: those
/// returned are new), each chat's record replaced (`put`) or kept
/// (`kept`, which writes nothing but proves ownership) only while this
/// instance owns the chat, and the markers of the turns whose chat was
/// written. Returns the new update ids, then the keys of the chats
/// written; a turn whose chat is missing was fenced. The parts cannot
/// interfere: a chat appears once (its turns folded in order), and a
/// turn's update was admitted by an earlier, committed group (a session
/// gets an update only after its admission commits). A confirmed offset
/// removes the answered markers below it (`pruned`; the group's own
/// markers below it go by `gone` instead, as `pruned` does not see this
/// statement's writes). The markers are found by `update_id = ANY(…)`, an
/// index lookup in any plan: a join on the unnested ids let the cached
/// generic plan scan every row of the bot.
const WRITE_GROUP: &str = "WITH admitted AS (
        INSERT INTO llmgram_updates (bot, update_id, key, entry, admitted_by)
        SELECT $1, u.id, u.key, u.entry, $2
        FROM unnest($3::bigint[], $4::bytea[], $5::bytea[]) WITH ORDINALITY AS u(id, key, entry, n)
        ORDER BY u.n
        ON CONFLICT (bot, update_id) DO NOTHING
        RETURNING update_id
    ), put AS (
        INSERT INTO llmgram_chats AS c (bot, key, record, owner)
        SELECT $1, t.key, t.record, $2 FROM unnest($6::bytea[], $7::bytea[]) AS t(key, record)
        ON CONFLICT (bot, key) DO UPDATE SET record = excluded.record WHERE c.owner = $2
        RETURNING c.key
    ), kept AS (
        INSERT INTO llmgram_chats AS c (bot, key, owner)
        SELECT $1, k, $2 FROM unnest($8::bytea[]) AS k
        ON CONFLICT (bot, key) DO UPDATE SET owner = c.owner WHERE c.owner = $2
        RETURNING c.key
    ), written AS (
        SELECT key FROM put UNION ALL SELECT key FROM kept
    ), answered AS (
        UPDATE llmgram_updates SET answered = true, entry = NULL
        WHERE bot = $1 AND update_id = ANY(ARRAY(
            SELECT m.id FROM unnest($9::bytea[], $10::bigint[]) AS m(key, id)
            WHERE m.key IN (SELECT key FROM written)))
        RETURNING 1
    ), gone AS (
        DELETE FROM llmgram_updates
        WHERE bot = $1 AND update_id = ANY(ARRAY(
            SELECT g.id FROM unnest($11::bytea[], $12::bigint[]) AS g(key, id)
            WHERE g.key IN (SELECT key FROM written)))
        RETURNING 1
    ), pruned AS (
        DELETE FROM llmgram_updates
        WHERE bot = $1 AND answered AND update_id >= $13 AND update_id < $14
        RETURNING 1
    )
    SELECT update_id, NULL::bytea FROM admitted
    UNION ALL SELECT NULL::bigint, key FROM written";

/// One chat's turns of a group, folded: the last record change wins, and
/// every turn's markers and number are kept.
#[derive(Debug, Default)]
struct ChatWrite {
    change: Option<Option<Vec<u8>>>,
    indices: Vec<usize>,
    answered: Vec<i64>,
    gone: Vec<i64>,
}

impl PgBackend {
    /// Connects, migrates the schema and registers this instance with a
    /// lease; blocking (the writer thread calls it). Returns the backend
    /// and this instance's id.
    pub fn open(url: &str, storage_config: &StorageConfig, bot: i64) -> Result<Self, StoreError> {
        let config = &storage_config.postgres;
        let settings =
            postgres::Config::from(connection_config(url, config, storage_config.persist_mode)?);
        let mut client = settings.connect(NoTls).map_err(storage)?;
        let migration = migrate(&mut client)?;
        let me = register(&mut client, config.lease)?;
        tracing::info!(
            instance = me,
            bot,
            schema = migration.to,
            "registered with the shared database"
        );
        Ok(Self {
            client,
            settings,
            bot,
            me,
            grace: config.grace,
            pruned_below: 0,
            fenced: Vec::new(),
            known: Vec::new(),
            prepared: HashMap::new(),
        })
    }

    /// This instance's id.
    pub fn instance(&self) -> i64 {
        self.me
    }

    /// The connection, opened again if it was lost.
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.is_closed() {
            tracing::warn!("database connection lost; connecting again");
            self.client = self.settings.connect(NoTls).map_err(storage)?;
            self.prepared.clear();
        }
        Ok(&mut self.client)
    }

    /// `sql` prepared on this connection, once: a statement given as text
    /// costs a round trip (and a plan) to prepare it at every call.
    fn prepared(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.prepared.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Runs the prepared `sql`; rows changed.
    fn run(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.client.execute(&statement, params)
    }

    /// Runs the prepared `sql`; its rows.
    fn rows(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.client.query(&statement, params)
    }

    /// Runs the prepared `sql`; its one row.
    fn row(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.client.query_one(&statement, params)
    }

    /// Opens the group's transaction at its first write; `Err` if an
    /// earlier write of the group failed (its transaction is aborted).
    fn open_group(&mut self, group: &mut PgGroup) -> Result<(), StoreError> {
        if let Some(error) = &group.failed {
            return Err(error.clone());
        }
        if !group.open {
            let opened = self
                .client()
                .and_then(|client| client.batch_execute("BEGIN").map_err(storage));
            if let Err(error) = opened {
                group.failed = Some(error.clone());
                return Err(error);
            }
            group.open = true;
        }
        Ok(())
    }

    /// Runs `write` inside the group's transaction, after the group's
    /// waiting admissions and turns (so it sees them, in the group's order);
    /// a failure marks the group failed (except [`StoreError::Fenced`],
    /// which writes nothing and leaves the transaction usable).
    fn in_group<T>(
        &mut self,
        group: &mut PgGroup,
        write: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.open_group(group)?;
        self.flush(group)?;
        let result = write(self);
        if let Err(error) = &result
            && *error != StoreError::Fenced
        {
            group.failed = Some(error.clone());
        }
        result
    }

    /// `/forget`: empties the conversation's record, keeping what it spent
    /// (`usage`), and the rest of the chat's records, only while this
    /// instance owns it (or nobody has it yet); `Fenced` otherwise. Other
    /// turns are written by [`Self::flush`].
    fn forget_chat(&mut self, key: &SessionKey, usage: Option<Vec<u8>>) -> Result<(), StoreError> {
        let (bot, me) = (self.bot, self.me);
        let bytes = session_key(key);
        let written = self
            .run(
                "INSERT INTO llmgram_chats AS c (bot, key, usage, owner) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (bot, key) DO UPDATE SET record = NULL, usage = excluded.usage
                 WHERE c.owner = $4",
                &[&bot, &bytes, &usage, &me],
            )
            .map_err(storage)?;
        if written == 0 {
            return Err(StoreError::Fenced);
        }
        self.forget_rest_of_chat(key)
    }

    /// `/forget`: the chat's other records (its forum topics, or the chat's
    /// own when `session` is a topic) are emptied, each keeping its spend,
    /// and every quarantined copy of the chat's records goes (as on fjall).
    fn forget_rest_of_chat(&mut self, session: &SessionKey) -> Result<(), StoreError> {
        let own = session_key(session);
        let prefix = chat_key(session.chat()).to_vec();
        let rows = self
            .client
            .query(
                "SELECT key, record FROM llmgram_chats
                 WHERE bot = $1 AND substring(key from 1 for 8) = $2 AND key <> $3
                   AND record IS NOT NULL",
                &[&{ self.bot }, &prefix, &own],
            )
            .map_err(storage)?;
        for row in rows {
            let key: Vec<u8> = row.get(0);
            // A Business fan chat shares only its id with the bot's chat
            // of that id: another conversation altogether.
            let other_namespace = super::session_from_key(&key)
                .is_some_and(|other| other.connection() != session.connection());
            if other_namespace {
                continue;
            }
            let value: Vec<u8> = row.get(1);
            let usage = record::decode_chat(&value)
                .ok()
                .map(|other| record::ChatUsage::of(&other.counters))
                .filter(|usage| !usage.is_nothing())
                .map(|usage| record::encode_usage(&usage))
                .transpose()
                .map_err(codec)?;
            self.run(
                "UPDATE llmgram_chats SET record = NULL, usage = coalesce($3, usage)
                     WHERE bot = $1 AND key = $2",
                &[&{ self.bot }, &key, &usage],
            )
            .map_err(storage)?;
        }
        self.run(
            "DELETE FROM llmgram_failed WHERE bot = $1 AND kind = 'chat'
                 AND substring(key from 1 for 8) = $2",
            &[&{ self.bot }, &prefix],
        )
        .map_err(storage)?;
        Ok(())
    }

    /// Moves a record that does not decode to `llmgram_failed` (autocommit:
    /// reads run outside any group).
    fn quarantine(&mut self, kind: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.run(
            "INSERT INTO llmgram_failed (bot, kind, key, value) VALUES ($1, $2, $3, $4)",
            &[&{ self.bot }, &kind, &key, &value],
        )
        .map_err(storage)?;
        Ok(())
    }

    /// Claims the conversations `keys` for this instance with one
    /// statement, in key order (two instances claiming the same chats lock
    /// them in one order); the record and spend of each taken, by key. The
    /// owners of those not taken are told an update of theirs is waiting
    /// (best effort: their sweep finds it anyway).
    ///
    /// The claim commits without waiting for the disk (`set_config` local
    /// to its transaction): a claim a database crash loses only fences this
    /// instance's next commit of the chat, and the chat's first durable
    /// commit flushes the WAL holding the claim anyway. It saves a WAL
    /// flush per new conversation on the writer thread.
    fn claim(&mut self, keys: &[SessionKey]) -> Result<HashMap<Vec<u8>, Claimed>, StoreError> {
        let mut bytes: Vec<Vec<u8>> = keys.iter().map(session_key).collect();
        bytes.sort_unstable();
        bytes.dedup();
        let (bot, me, grace) = (self.bot, self.me, secs(self.grace));
        self.client()?;
        let rows = self
            .rows(
                "INSERT INTO llmgram_chats AS c (bot, key, owner)
                 SELECT $1, k.key, $3
                 FROM unnest($2::bytea[]) WITH ORDINALITY AS k(key, n),
                      (SELECT set_config('synchronous_commit', 'off', true)) s
                 ORDER BY k.n
                 ON CONFLICT (bot, key) DO UPDATE SET owner = $3
                 WHERE c.owner IS NULL OR c.owner = $3 OR NOT EXISTS (
                     SELECT 1 FROM llmgram_instances i WHERE i.id = c.owner
                     AND i.lease_until > now() - make_interval(secs => $4))
                 RETURNING c.key, c.record, c.usage",
                &[&bot, &bytes, &me, &grace],
            )
            .map_err(storage)?;
        let claimed: HashMap<Vec<u8>, Claimed> = rows
            .iter()
            .map(|row| (row.get(0), (row.get(1), row.get(2))))
            .collect();
        let refused: Vec<Vec<u8>> = bytes
            .into_iter()
            .filter(|key| !claimed.contains_key(key))
            .collect();
        if !refused.is_empty() {
            let notified = self.run(
                "SELECT pg_notify('llmgram_instance_' || owner::text, '') FROM llmgram_chats
                 WHERE bot = $1 AND key = ANY($2) AND owner IS NOT NULL",
                &[&bot, &refused],
            );
            if let Err(error) = notified {
                tracing::debug!(error = %crate::error::error_chain(&error), "owners not notified; their sweep finds the updates");
            }
        }
        Ok(claimed)
    }

    /// A claimed conversation's record: a record that does not decode is
    /// quarantined and the chat starts fresh; a forgotten chat keeps only
    /// what it spent.
    fn decode_claimed(
        &mut self,
        key: &SessionKey,
        bytes: &[u8],
        record: Option<Vec<u8>>,
        usage: Option<Vec<u8>>,
        quarantined: &AtomicU64,
    ) -> Result<Option<ChatRecord>, StoreError> {
        let Some(value) = record else {
            return Ok(
                usage.and_then(|value| super::db::forgotten_record(key, &value, quarantined))
            );
        };
        match record::decode_chat(&value) {
            Ok(record) => Ok(Some(record)),
            Err(error) => {
                tracing::error!(chat_id = key.chat().0, thread_id = key.thread_number(), %error, "chat record does not decode; quarantined, chat starts fresh");
                self.quarantine("chat", bytes, &value)?;
                let (bot, me) = (self.bot, self.me);
                self.run(
                    "UPDATE llmgram_chats SET record = NULL
                         WHERE bot = $1 AND key = $2 AND owner = $3",
                    &[&bot, &bytes, &me],
                )
                .map_err(storage)?;
                quarantined.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }
}

/// A claimed conversation's stored record and spend.
type Claimed = (Option<Vec<u8>>, Option<Vec<u8>>);

/// `answer` for each conversation of `keys` (given it and its
/// [`session_key`]), in their order; a conversation asked twice in one
/// batch gets the first answer again.
fn each_once<T: Clone>(
    keys: &[SessionKey],
    mut answer: impl FnMut(&SessionKey, &[u8]) -> T,
) -> Vec<T> {
    let mut answered: HashMap<Vec<u8>, T> = HashMap::new();
    keys.iter()
        .map(|key| {
            let bytes = session_key(key);
            if let Some(done) = answered.get(&bytes) {
                return done.clone();
            }
            let result = answer(key, &bytes);
            answered.insert(bytes, result.clone());
            result
        })
        .collect()
}

impl Backend for PgBackend {
    type Group = PgGroup;
    type Snapshot = ();

    fn begin(&mut self) -> PgGroup {
        PgGroup::default()
    }

    /// Adds the updates not admitted earlier in the group; those the store
    /// already holds are found when the group is written and reported by
    /// [`Backend::take_known`].
    fn admit(
        &mut self,
        group: &mut PgGroup,
        updates: Vec<Inbound>,
    ) -> Result<Vec<Inbound>, StoreError> {
        if let Some(error) = &group.failed {
            return Err(error.clone());
        }
        let mut admitted = Vec::with_capacity(updates.len());
        for inbound in updates {
            if !group.admitted_now.insert(inbound.update_id) {
                tracing::debug!(
                    update_id = inbound.update_id,
                    "update already received; skipped"
                );
                continue;
            }
            // The admission number comes from the table's sequence.
            let entry = UpdateEntry::Pending(record::StoredUpdate::new(&inbound, 0));
            group.admits.push(DeferredAdmit {
                update_id: i64::from(inbound.update_id),
                key: session_key(&inbound.key),
                entry: record::encode_update(&entry).map_err(codec)?,
            });
            admitted.push(inbound);
        }
        Ok(admitted)
    }

    fn commit_turn(
        &mut self,
        group: &mut PgGroup,
        key: &SessionKey,
        update_id: u32,
        also_answered: Vec<u32>,
        change: RecordChange,
    ) -> Result<(), StoreError> {
        let index = group.next_turn;
        group.next_turn += 1;
        let (gone, answered): (Vec<i64>, Vec<i64>) = also_answered
            .into_iter()
            .chain([update_id])
            .map(i64::from)
            // Below the confirmed offset Telegram will not send them again:
            // no marker needed.
            .partition(|id| *id < i64::from(self.pruned_below));
        let change = match change {
            RecordChange::Put(record) => Some(Some(record)),
            RecordChange::Delete => Some(None),
            RecordChange::Keep => None,
            RecordChange::Forget(usage) => {
                // Touches the chat's other records too: written now, after
                // the turns before it.
                return self.in_group(group, |this| {
                    this.forget_chat(key, usage)?;
                    this.mark_answered(&answered, &gone)
                });
            }
        };
        if let Some(error) = &group.failed {
            return Err(error.clone());
        }
        group.turns.push(DeferredTurn {
            index,
            key: session_key(key),
            change,
            answered,
            gone,
        });
        Ok(())
    }

    /// Removes the answered markers below `below` (long polling confirms
    /// offsets; see [`super::db::FjallBackend`] for ids starting over).
    fn confirm(&mut self, group: &mut PgGroup, below: u32) -> Result<(), StoreError> {
        let from = self.pruned_below;
        if below <= from {
            if below < from {
                tracing::info!(below, from, "update ids started over");
            }
            self.pruned_below = below;
            return Ok(());
        }
        if let Some(error) = &group.failed {
            return Err(error.clone());
        }
        // Written with the group's admissions and turns (long polling
        // confirms an offset after every poll: no transaction of its own).
        let from = group.prune.map_or(i64::from(from), |(first, _)| first);
        group.prune = Some((from, i64::from(below)));
        self.pruned_below = below;
        Ok(())
    }

    fn save_setting(
        &mut self,
        group: &mut PgGroup,
        key: BotKey,
        setting: &BotSetting,
    ) -> Result<(), StoreError> {
        let bytes = record::encode_setting(setting).map_err(codec)?;
        let name = String::from_utf8_lossy(key.as_bytes()).into_owned();
        let bot = self.bot;
        self.in_group(group, |this| {
            this.run(
                "INSERT INTO llmgram_settings (bot, name, value) VALUES ($1, $2, $3)
                     ON CONFLICT (bot, name) DO UPDATE SET value = excluded.value",
                &[&bot, &name, &bytes],
            )
            .map_err(storage)?;
            // Delivered at commit: every instance's cluster actor has its
            // owner read the setting again.
            this.run(
                "SELECT pg_notify($1, $2)",
                &[&SETTINGS_CHANNEL, &format!("{bot}:{name}")],
            )
            .map_err(storage)?;
            Ok(())
        })
    }

    fn commit(&mut self, mut group: PgGroup) -> Result<Committed, StoreError> {
        if !group.open {
            if let Some(error) = group.failed {
                return Err(error);
            }
            if group.admits.is_empty() && group.turns.is_empty() && group.prune.is_none() {
                return Ok(Committed::Nothing);
            }
            // The whole group is one statement: autocommit, one round trip.
            self.client()?;
            self.flush(&mut group)?;
        } else {
            // The rest of the group, if nothing failed before it.
            let _ = self.flush(&mut group);
            if let Some(error) = group.failed {
                // The transaction is aborted; end it so the connection is
                // usable again (a lost connection is reopened next time).
                if let Err(rollback) = self.client.batch_execute("ROLLBACK") {
                    tracing::debug!(error = %crate::error::error_chain(&rollback), "rollback failed");
                }
                return Err(error);
            }
            self.client.batch_execute("COMMIT").map_err(storage)?;
        }
        self.fenced = group.fenced;
        self.known = group.known;
        Ok(Committed::Written)
    }

    fn take_fenced(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.fenced)
    }

    fn take_known(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.known)
    }

    /// Takes the conversation for this instance (see the module doc) and
    /// returns its record.
    fn load_chat(
        &mut self,
        key: &SessionKey,
        quarantined: &AtomicU64,
    ) -> Result<Option<ChatRecord>, StoreError> {
        self.load_chats(std::slice::from_ref(key), quarantined)
            .pop()
            .unwrap_or(Err(StoreError::Unavailable))
    }

    /// Takes the conversations for this instance with one statement and
    /// returns their records (a batch's loads: hundreds of new chats at
    /// once after a start or a failover).
    fn load_chats(
        &mut self,
        keys: &[SessionKey],
        quarantined: &AtomicU64,
    ) -> Vec<Result<Option<ChatRecord>, StoreError>> {
        let mut claimed = match self.claim(keys) {
            Ok(claimed) => claimed,
            Err(error) => return keys.iter().map(|_| Err(error.clone())).collect(),
        };
        each_once(keys, |key, bytes| match claimed.remove(bytes) {
            Some((record, usage)) => self.decode_claimed(key, bytes, record, usage, quarantined),
            None => Err(StoreError::Fenced),
        })
    }

    /// The unanswered updates this instance may answer now: of chats it
    /// owns, nobody owns, or whose owner's lease lapsed more than the
    /// grace ago (see [`claimable_pending`]).
    fn pending_updates(
        &mut self,
        quarantined: &AtomicU64,
    ) -> Result<Vec<record::StoredUpdate>, StoreError> {
        let (bot, me, grace) = (self.bot, self.me, self.grace);
        let rows = claimable_pending(self.client()?, bot, me, grace, Duration::ZERO, i64::MAX)?;
        self.decode_pending(rows, quarantined)
    }

    /// One conversation's unanswered updates, through its own index (a
    /// new session asks this, so it must not scan the others').
    fn pending_of(
        &mut self,
        key: &SessionKey,
        quarantined: &AtomicU64,
    ) -> Result<Vec<record::StoredUpdate>, StoreError> {
        self.pending_of_chats(std::slice::from_ref(key), quarantined)
            .pop()
            .unwrap_or(Err(StoreError::Unavailable))
    }

    /// Several conversations' unanswered updates with one statement,
    /// through their index.
    fn pending_of_chats(
        &mut self,
        keys: &[SessionKey],
        quarantined: &AtomicU64,
    ) -> Vec<Result<Vec<record::StoredUpdate>, StoreError>> {
        let bot = self.bot;
        let bytes: Vec<Vec<u8>> = keys.iter().map(session_key).collect();
        let rows = match self.client() {
            Ok(_) => self
                .rows(
                    "SELECT update_id, key, entry, admitted, admitted_by FROM llmgram_updates
                     WHERE bot = $1 AND key = ANY($2) AND NOT answered ORDER BY admitted",
                    &[&bot, &bytes],
                )
                .map_err(storage),
            Err(error) => Err(error),
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => return keys.iter().map(|_| Err(error.clone())).collect(),
        };
        let mut by_chat: HashMap<Vec<u8>, Vec<PendingRow>> = HashMap::new();
        for row in &rows {
            let pending: PendingRow = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            by_chat.entry(pending.1.clone()).or_default().push(pending);
        }
        each_once(keys, |_, bytes| {
            let rows = by_chat.remove(bytes).unwrap_or_default();
            self.decode_pending(rows, quarantined)
        })
    }

    fn newest_update_id(&mut self) -> Result<Option<u32>, StoreError> {
        let bot = self.bot;
        self.client()?;
        let row = self
            .row(
                "SELECT max(update_id) FROM llmgram_updates WHERE bot = $1",
                &[&bot],
            )
            .map_err(storage)?;
        Ok(row
            .get::<_, Option<i64>>(0)
            .and_then(|id| u32::try_from(id).ok()))
    }

    fn load_setting(
        &mut self,
        key: BotKey,
        quarantined: &AtomicU64,
    ) -> Result<Option<BotSetting>, StoreError> {
        let bot = self.bot;
        load_setting(self.client()?, bot, key, quarantined)
    }

    fn snapshot(&self) {}

    /// Backups of a shared database are PostgreSQL's own (`pg_dump`,
    /// `pg_basebackup`): one instance cannot copy what the others write.
    fn write_backup(_snapshot: &(), _to: &Path) -> Result<BackupReport, BackupError> {
        Err(BackupError::Target(
            "storage.backend is \"postgres\": back the database up with pg_dump or \
             pg_basebackup (deploy/postgresql.md)"
                .into(),
        ))
    }

    /// On a clean stop: gives up every chat this instance owns and ends its
    /// lease, so the others take its chats at once instead of after the
    /// lease and the grace.
    fn persist_all(&mut self) -> Result<(), StoreError> {
        let me = self.me;
        let client = self.client()?;
        client
            .execute(
                "UPDATE llmgram_chats SET owner = NULL WHERE owner = $1",
                &[&me],
            )
            .map_err(storage)?;
        client
            .execute("DELETE FROM llmgram_instances WHERE id = $1", &[&me])
            .map_err(storage)?;
        tracing::info!(instance = me, "released every chat and the lease");
        Ok(())
    }

    fn release(&mut self, group: &mut PgGroup, key: &SessionKey) -> Result<(), StoreError> {
        // Never ahead of the chat's last turn: `in_group` writes it first.
        let (bot, me, bytes) = (self.bot, self.me, session_key(key));
        self.in_group(group, |this| {
            this.run(
                "UPDATE llmgram_chats SET owner = NULL WHERE bot = $1 AND key = $2 AND owner = $3",
                &[&bot, &bytes, &me],
            )
            .map_err(storage)?;
            Ok(())
        })
    }
}

impl PgBackend {
    /// Writes the group's waiting admissions and turns with
    /// [`WRITE_GROUP`] (inside the group's transaction when one is open,
    /// else on its own), and notes the updates already held and the turns
    /// fenced. A failure marks the group failed.
    fn flush(&mut self, group: &mut PgGroup) -> Result<(), StoreError> {
        if let Some(error) = &group.failed {
            return Err(error.clone());
        }
        if group.admits.is_empty() && group.turns.is_empty() && group.prune.is_none() {
            return Ok(());
        }
        let (prune_from, prune_below) = group.prune.take().unwrap_or((0, 0));
        let admits = std::mem::take(&mut group.admits);
        let (mut ids, mut admit_keys, mut entries) = (
            Vec::with_capacity(admits.len()),
            Vec::with_capacity(admits.len()),
            Vec::with_capacity(admits.len()),
        );
        for admit in admits {
            ids.push(admit.update_id);
            admit_keys.push(admit.key);
            entries.push(admit.entry);
        }
        // Each chat once, its turns folded in order.
        let mut order: Vec<Vec<u8>> = Vec::new();
        let mut chats: HashMap<Vec<u8>, ChatWrite> = HashMap::new();
        for turn in std::mem::take(&mut group.turns) {
            let chat = chats.entry(turn.key.clone()).or_insert_with(|| {
                order.push(turn.key.clone());
                ChatWrite::default()
            });
            if turn.change.is_some() {
                chat.change = turn.change;
            }
            chat.indices.push(turn.index);
            chat.answered.extend(turn.answered);
            chat.gone.extend(turn.gone);
        }
        let (mut put_keys, mut records, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        let (mut answered_keys, mut answered) = (Vec::new(), Vec::new());
        let (mut gone_keys, mut gone) = (Vec::new(), Vec::new());
        for key in &order {
            let Some(chat) = chats.get_mut(key) else {
                continue;
            };
            match chat.change.take() {
                Some(record) => {
                    put_keys.push(key.clone());
                    records.push(record);
                }
                None => kept.push(key.clone()),
            }
            for id in &chat.answered {
                // Below a confirmed offset: no marker needed.
                if (prune_from..prune_below).contains(id) {
                    gone_keys.push(key.clone());
                    gone.push(*id);
                } else {
                    answered_keys.push(key.clone());
                    answered.push(*id);
                }
            }
            for id in &chat.gone {
                gone_keys.push(key.clone());
                gone.push(*id);
            }
        }
        let (bot, me) = (self.bot, self.me);
        let rows = self.rows(
            WRITE_GROUP,
            &[
                &bot,
                &me,
                &ids,
                &admit_keys,
                &entries,
                &put_keys,
                &records,
                &kept,
                &answered_keys,
                &answered,
                &gone_keys,
                &gone,
                &prune_from,
                &prune_below,
            ],
        );
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                let error = storage(error);
                group.failed = Some(error.clone());
                return Err(error);
            }
        };
        let mut new = HashSet::new();
        let mut written = HashSet::new();
        for row in &rows {
            match (
                row.get::<_, Option<i64>>(0),
                row.get::<_, Option<Vec<u8>>>(1),
            ) {
                (Some(id), _) => {
                    new.insert(id);
                }
                (None, Some(key)) => {
                    written.insert(key);
                }
                (None, None) => {}
            }
        }
        for id in ids {
            if !new.contains(&id) {
                tracing::debug!(update_id = id, "update already received; skipped");
                group.known.extend(u32::try_from(id).ok());
            }
        }
        for (key, chat) in chats {
            if !written.contains(&key) {
                group.fenced.extend(chat.indices);
            }
        }
        Ok(())
    }

    /// Marks `answered` answered and removes `gone`: a `/forget` turn's
    /// updates, once its fenced write went through (other turns' markers
    /// are part of [`WRITE_GROUP`]).
    fn mark_answered(&mut self, answered: &[i64], gone: &[i64]) -> Result<(), StoreError> {
        if !answered.is_empty() {
            self.run(
                "UPDATE llmgram_updates SET answered = true, entry = NULL
                 WHERE bot = $1 AND update_id = ANY($2)",
                &[&{ self.bot }, &answered],
            )
            .map_err(storage)?;
        }
        if !gone.is_empty() {
            self.run(
                "DELETE FROM llmgram_updates WHERE bot = $1 AND update_id = ANY($2)",
                &[&{ self.bot }, &gone],
            )
            .map_err(storage)?;
        }
        Ok(())
    }

    fn decode_pending(
        &mut self,
        rows: Vec<PendingRow>,
        quarantined: &AtomicU64,
    ) -> Result<Vec<record::StoredUpdate>, StoreError> {
        let mut pending = Vec::with_capacity(rows.len());
        for (update_id, key, entry, admitted, _) in rows {
            match decode_pending_entry(entry.as_deref(), admitted) {
                Ok(Some(update)) => pending.push(update),
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(update_id, %error, "stored update does not decode; quarantined");
                    self.quarantine("update", &key, entry.as_deref().unwrap_or_default())?;
                    self.run(
                        "UPDATE llmgram_updates SET answered = true, entry = NULL
                             WHERE bot = $1 AND update_id = $2",
                        &[&{ self.bot }, &update_id],
                    )
                    .map_err(storage)?;
                    quarantined.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(pending)
    }
}

/// An unanswered update's row: its id, conversation key, encoded entry
/// (`None` once answered), admission number and the instance that received
/// it.
pub type PendingRow = (i64, Vec<u8>, Option<Vec<u8>>, i64, Option<i64>);

/// A pending row's update with its admission number; `None` for a row
/// holding no pending update.
pub fn decode_pending_entry(
    entry: Option<&[u8]>,
    admitted: i64,
) -> Result<Option<record::StoredUpdate>, record::RecordError> {
    let Some(bytes) = entry else {
        return Ok(None);
    };
    Ok(match record::decode_update(bytes)? {
        UpdateEntry::Pending(update) => {
            Some(update.admitted_as(u64::try_from(admitted).unwrap_or_default()))
        }
        UpdateEntry::Answered => None,
    })
}

/// Unanswered updates (id, conversation key, entry, admission number), in
/// admission order, at most `limit`, that instance `me` should answer and
/// may not be answering yet: of chats it owns, those another instance
/// received (handed over), and its own once older than `after` (lost
/// locally, or a long answer: its sessions skip what they already have);
/// of chats nobody owns, those older than `after` (the receiving instance
/// is usually answering them); and of chats whose owner's lease lapsed
/// more than `grace` ago (or whose owner is gone), all. Judged on the
/// database's clock.
pub fn claimable_pending(
    client: &mut Client,
    bot: i64,
    me: i64,
    grace: Duration,
    after: Duration,
    limit: i64,
) -> Result<Vec<PendingRow>, StoreError> {
    let rows = client
        .query(
            CLAIMABLE_PENDING,
            &[&bot, &me, &secs(grace), &secs(after), &limit],
        )
        .map_err(storage)?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
        .collect())
}

/// The query of [`claimable_pending`] (also run by the cluster actor on its
/// own connection).
pub const CLAIMABLE_PENDING: &str = "
    SELECT u.update_id, u.key, u.entry, u.admitted, u.admitted_by
    FROM llmgram_updates u
    LEFT JOIN llmgram_chats c ON c.bot = u.bot AND c.key = u.key
    LEFT JOIN llmgram_instances i ON i.id = c.owner
    WHERE u.bot = $1 AND NOT u.answered
      AND ((c.owner = $2 AND (u.admitted_by IS DISTINCT FROM $2
                              OR u.admitted_at <= now() - make_interval(secs => $4)))
           OR (c.owner IS NULL AND u.admitted_at <= now() - make_interval(secs => $4))
           OR (c.owner IS NOT NULL AND c.owner <> $2
               AND (i.id IS NULL OR i.lease_until <= now() - make_interval(secs => $3))))
    ORDER BY u.admitted
    LIMIT $5";

/// A bot-wide setting; `None` if never set or unreadable (counted).
fn load_setting(
    client: &mut Client,
    bot: i64,
    key: BotKey,
    quarantined: &AtomicU64,
) -> Result<Option<BotSetting>, StoreError> {
    let name = String::from_utf8_lossy(key.as_bytes()).into_owned();
    let row = client
        .query_opt(
            "SELECT value FROM llmgram_settings WHERE bot = $1 AND name = $2",
            &[&bot, &name],
        )
        .map_err(storage)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let value: Vec<u8> = row.get(0);
    match record::decode_setting(&value) {
        Ok(setting) => Ok(Some(setting)),
        Err(error) => {
            tracing::error!(key = ?key, %error, "bot setting does not decode; ignored");
            quarantined.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use llmgram_fakes::TempPostgres;

    use super::*;
    use crate::config::Config;
    use crate::store::backend::contract::{self, update};
    use crate::telegram::inbound::ChatId;

    type TestResult = Result<(), Box<dyn Error>>;

    /// A real PostgreSQL for one test (the tests need the distribution's
    /// server; `.ci/run` installs it).
    fn server() -> TempPostgres {
        #![allow(clippy::expect_used)] // a test's setup failing is a test failure
        TempPostgres::start().expect("a throwaway PostgreSQL (install the postgresql package)")
    }

    fn storage() -> Result<StorageConfig, Box<dyn Error>> {
        Ok(Config::from_defaults_with("storage.backend = \"postgres\"")?.storage)
    }

    /// Opens a backend on `url` (again after the previous one is dropped):
    /// a new instance each time, as a restarted process is.
    fn postgres_on(url: String) -> impl FnMut() -> Result<PgBackend, Box<dyn Error>> {
        move || Ok(PgBackend::open(&url, &storage()?, 1)?)
    }

    fn record(marker: u32) -> Result<RecordChange, Box<dyn Error>> {
        Ok(RecordChange::Put(record::encode_chat(&ChatRecord {
            recent_updates: vec![marker],
            ..ChatRecord::default()
        })?))
    }

    #[test]
    fn postgres_keeps_the_backend_contract_on_groups_and_admission() -> TestResult {
        let db = server();
        contract::groups_are_atomic_and_admission_ordered(postgres_on(db.url()))
    }

    #[test]
    fn postgres_keeps_the_backend_contract_on_confirmations_settings_and_deletes() -> TestResult {
        let db = server();
        contract::confirmations_settings_and_deletes(postgres_on(db.url()))
    }

    #[test]
    fn migrations_run_once_and_a_newer_schema_is_refused() -> TestResult {
        let db = server();
        let config = storage()?;
        let settings = postgres::Config::from(connection_config(
            &db.url(),
            &config.postgres,
            config.persist_mode,
        )?);
        let mut client = settings.connect(NoTls)?;
        assert_eq!(schema_version(&mut client)?, 0);
        assert_eq!(
            migrate(&mut client)?,
            Migration {
                from: 0,
                to: SCHEMA_VERSION
            }
        );
        assert_eq!(
            migrate(&mut client)?,
            Migration {
                from: SCHEMA_VERSION,
                to: SCHEMA_VERSION
            }
        );
        assert_eq!(schema_version(&mut client)?, SCHEMA_VERSION);
        client.execute("INSERT INTO llmgram_schema (version) VALUES (99)", &[])?;
        let refused = migrate(&mut client).expect_err("a newer schema is refused");
        assert!(refused.to_string().contains("newer"), "{refused}");
        Ok(())
    }

    /// A database of schema 1 (a build before migration 2) keeps its rows,
    /// and its updates are then keyed by id first.
    #[test]
    fn a_version_1_database_migrates_keeping_its_rows() -> TestResult {
        let db = server();
        db.psql(&format!(
            "CREATE TABLE llmgram_schema (version integer NOT NULL);
             INSERT INTO llmgram_schema VALUES (1);
             {}
             INSERT INTO llmgram_updates (bot, update_id, key) VALUES (1, 5, '\\x01');",
            MIGRATIONS[0].1
        ))?;
        let config = storage()?;
        let settings = postgres::Config::from(connection_config(
            &db.url(),
            &config.postgres,
            config.persist_mode,
        )?);
        let mut client = settings.connect(NoTls)?;
        assert_eq!(
            migrate(&mut client)?,
            Migration {
                from: 1,
                to: SCHEMA_VERSION
            }
        );
        assert_eq!(db.psql("SELECT update_id FROM llmgram_updates")?, "5");
        let key = db.psql(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index
             WHERE indrelid = 'llmgram_updates'::regclass AND indisprimary",
        )?;
        assert!(key.ends_with("(update_id, bot)"), "{key}");
        Ok(())
    }

    /// The ownership protocol between two instances: a live owner's chat
    /// cannot be taken (the load is fenced and the owner notified); once
    /// its lease has lapsed for longer than the grace, it is, and the old
    /// owner's next commit is fenced without spoiling the rest of its group.
    #[test]
    fn a_chat_moves_only_after_its_owners_lease_lapses_and_the_old_owner_is_fenced() -> TestResult {
        let db = server();
        let mut first = postgres_on(db.url())()?;
        let mut second = postgres_on(db.url())()?;
        assert_ne!(first.instance(), second.instance(), "a fresh id per start");
        let counted = AtomicU64::new(0);
        let (chat, other) = (
            SessionKey::of_chat(ChatId(10)),
            SessionKey::of_chat(ChatId(11)),
        );

        // Admitted anywhere: the second instance receives the update.
        let mut group = second.begin();
        assert_eq!(
            second
                .admit(&mut group, vec![update(1, 10), update(2, 11)])?
                .len(),
            2
        );
        second.commit(group)?;
        assert_eq!(first.load_chat(&chat, &counted)?, None, "new: taken");
        assert_eq!(second.load_chat(&chat, &counted), Err(StoreError::Fenced));
        let mut group = first.begin();
        first.commit_turn(&mut group, &chat, 1, Vec::new(), record(1)?)?;
        first.commit(group)?;

        // The first instance's lease lapses (paused, cut off): after the
        // grace the second takes the chat.
        db.psql(&format!(
            "UPDATE llmgram_instances SET lease_until = now() - interval '1 hour' WHERE id = {}",
            first.instance()
        ))?;
        assert!(second.load_chat(&chat, &counted)?.is_some());

        // The old owner wakes: its turn on the chat is fenced, counted by
        // the caller, and another turn of the same group still commits.
        let mut group = first.begin();
        first.commit_turn(&mut group, &chat, 3, Vec::new(), record(3)?)?;
        first.commit_turn(&mut group, &other, 2, Vec::new(), record(2)?)?;
        assert_eq!(first.commit(group)?, Committed::Written);
        assert_eq!(first.take_fenced(), vec![0], "the first turn of the group");
        assert!(first.take_fenced().is_empty(), "taken once");
        let record_of = |key: &str| {
            db.psql(&format!(
                "SELECT encode(record, 'hex') FROM llmgram_chats WHERE key = '\\x{key}'"
            ))
        };
        let stored = record_of(&hex(&session_key(&chat)))?;
        let expected = match record(1)? {
            RecordChange::Put(bytes) => hex(&bytes),
            _ => unreachable!(),
        };
        assert_eq!(stored, expected, "no stale write");
        assert!(!record_of(&hex(&session_key(&other)))?.is_empty());
        let pending =
            db.psql("SELECT update_id FROM llmgram_updates WHERE NOT answered ORDER BY 1")?;
        assert_eq!(
            pending, "",
            "the fenced turn's update is not marked answered here"
        );
        Ok(())
    }

    /// A chat's second turn in one group is written after its first, and
    /// a `/forget` after the turns before it.
    #[test]
    fn turns_of_one_chat_in_one_group_keep_their_order() -> TestResult {
        let db = server();
        let mut backend = postgres_on(db.url())()?;
        let counted = AtomicU64::new(0);
        let chat = SessionKey::of_chat(ChatId(30));
        let mut group = backend.begin();
        backend.admit(
            &mut group,
            vec![update(1, 30), update(2, 30), update(3, 30)],
        )?;
        backend.commit(group)?;
        let mut group = backend.begin();
        backend.commit_turn(&mut group, &chat, 1, Vec::new(), record(1)?)?;
        backend.commit_turn(&mut group, &chat, 2, Vec::new(), record(2)?)?;
        backend.commit(group)?;
        assert_eq!(backend.take_fenced(), Vec::<usize>::new());
        let loaded = backend
            .load_chat(&chat, &counted)?
            .map(|r| r.recent_updates);
        assert_eq!(loaded, Some(vec![2]));
        let mut group = backend.begin();
        backend.commit_turn(&mut group, &chat, 3, Vec::new(), record(3)?)?;
        backend.commit_turn(&mut group, &chat, 3, Vec::new(), RecordChange::Forget(None))?;
        backend.commit(group)?;
        assert_eq!(backend.load_chat(&chat, &counted)?, None, "forgotten last");
        assert!(backend.pending_updates(&counted)?.is_empty());
        Ok(())
    }

    /// A group's admissions and turns are written together (by one
    /// statement alone, or inside the transaction a setting opens): an
    /// update the store already held is reported at commit, not answered
    /// again; a fenced turn marks nothing; a kept record proves ownership.
    #[test]
    fn admissions_and_turns_written_together_report_known_updates_and_fenced_turns() -> TestResult {
        for with_setting in [false, true] {
            let db = server();
            let mut first = postgres_on(db.url())()?;
            let mut second = postgres_on(db.url())()?;
            let counted = AtomicU64::new(0);
            let (mine, theirs) = (
                SessionKey::of_chat(ChatId(40)),
                SessionKey::of_chat(ChatId(41)),
            );
            let mut group = first.begin();
            first.admit(&mut group, vec![update(1, 40), update(2, 41)])?;
            first.commit(group)?;
            assert!(first.take_known().is_empty());
            first.load_chat(&mine, &counted)?;
            second.load_chat(&theirs, &counted)?;

            let mut group = first.begin();
            let admitted = first.admit(&mut group, vec![update(1, 40), update(3, 40)])?;
            assert_eq!(admitted.len(), 2, "held updates are known only at commit");
            first.commit_turn(&mut group, &mine, 1, Vec::new(), RecordChange::Keep)?;
            first.commit_turn(&mut group, &theirs, 2, Vec::new(), record(2)?)?;
            if with_setting {
                first.save_setting(
                    &mut group,
                    BotKey::DefaultModel,
                    &BotSetting::DefaultModel("m".into()),
                )?;
            }
            assert_eq!(first.commit(group)?, Committed::Written);
            assert_eq!(first.take_known(), vec![1], "{with_setting}");
            assert_eq!(first.take_fenced(), vec![1], "{with_setting}");
            let pending: Vec<u32> = first
                .pending_updates(&counted)?
                .iter()
                .map(|u| u.update_id)
                .collect();
            // Update 2's chat is the second instance's: not offered here.
            assert_eq!(pending, vec![3], "{with_setting}");
            let answered =
                db.psql("SELECT update_id FROM llmgram_updates WHERE answered ORDER BY 1")?;
            assert_eq!(answered, "1", "{with_setting}");
            let setting = first.load_setting(BotKey::DefaultModel, &counted)?;
            assert_eq!(setting.is_some(), with_setting);
        }
        Ok(())
    }

    /// A confirmed offset is written with the group's turns: the markers
    /// below it go, those the same group answers below it too, and the
    /// unanswered updates stay.
    #[test]
    fn a_confirmed_offset_goes_with_the_groups_turns() -> TestResult {
        let db = server();
        let mut backend = postgres_on(db.url())()?;
        let counted = AtomicU64::new(0);
        let chat = SessionKey::of_chat(ChatId(60));
        let mut group = backend.begin();
        backend.admit(&mut group, (1..=4).map(|id| update(id, 60)).collect())?;
        backend.commit(group)?;
        backend.load_chat(&chat, &counted)?;
        let mut group = backend.begin();
        backend.commit_turn(&mut group, &chat, 1, Vec::new(), record(1)?)?;
        backend.commit(group)?;
        let ids = || db.psql("SELECT update_id FROM llmgram_updates ORDER BY 1");
        assert_eq!(ids()?, "1\n2\n3\n4", "1 answered, its marker kept");

        let mut group = backend.begin();
        backend.commit_turn(&mut group, &chat, 2, Vec::new(), record(2)?)?;
        backend.confirm(&mut group, 3)?;
        assert_eq!(backend.commit(group)?, Committed::Written);
        assert_eq!(ids()?, "3\n4");
        let pending: Vec<u32> = backend
            .pending_updates(&counted)?
            .iter()
            .map(|u| u.update_id)
            .collect();
        assert_eq!(pending, vec![3, 4]);
        Ok(())
    }

    /// A batch's loads are one claim: each conversation answered as
    /// `load_chat` would (taken, fenced by a live owner, the same one
    /// twice), and their unanswered updates one read, each its own.
    #[test]
    fn loads_and_pending_reads_of_a_batch_answer_each_conversation() -> TestResult {
        let db = server();
        let mut first = postgres_on(db.url())()?;
        let mut second = postgres_on(db.url())()?;
        let counted = AtomicU64::new(0);
        let (a, b, c) = (
            SessionKey::of_chat(ChatId(50)),
            SessionKey::of_chat(ChatId(51)),
            SessionKey::of_chat(ChatId(52)),
        );
        let mut group = first.begin();
        first.admit(
            &mut group,
            vec![update(1, 50), update(2, 51), update(3, 50), update(4, 52)],
        )?;
        first.commit(group)?;
        second.load_chat(&b, &counted)?;
        let mut group = second.begin();
        second.commit_turn(&mut group, &b, 2, Vec::new(), record(2)?)?;
        second.commit(group)?;

        let loaded = first.load_chats(&[a.clone(), b.clone(), a.clone()], &counted);
        assert_eq!(loaded, vec![Ok(None), Err(StoreError::Fenced), Ok(None)]);
        assert_eq!(second.load_chat(&a, &counted), Err(StoreError::Fenced));

        let ids = |pending: &Result<Vec<record::StoredUpdate>, StoreError>| {
            pending
                .as_ref()
                .map(|updates| updates.iter().map(|u| u.update_id).collect::<Vec<_>>())
                .map_err(Clone::clone)
        };
        let pending = first.pending_of_chats(&[a.clone(), b, c.clone(), a], &counted);
        let pending: Vec<_> = pending.iter().map(ids).collect();
        assert_eq!(
            pending,
            vec![Ok(vec![1, 3]), Ok(vec![]), Ok(vec![4]), Ok(vec![1, 3])]
        );
        assert_eq!(counted.load(Ordering::Relaxed), 0);
        Ok(())
    }

    /// Released on a clean stop: another instance takes the chats at once,
    /// and updates left unanswered are offered to it, in the order received.
    #[test]
    fn a_clean_stop_releases_every_chat_and_the_pending_updates_move() -> TestResult {
        let db = server();
        let mut first = postgres_on(db.url())()?;
        let counted = AtomicU64::new(0);
        let mut group = first.begin();
        first.admit(
            &mut group,
            vec![update(7, 20), update(5, 20), update(6, 21)],
        )?;
        first.commit(group)?;
        first.load_chat(&SessionKey::of_chat(ChatId(20)), &counted)?;
        let mut second = postgres_on(db.url())()?;
        let offered: Vec<u32> = second
            .pending_updates(&counted)?
            .iter()
            .map(|u| u.update_id)
            .collect();
        assert_eq!(
            offered,
            vec![6],
            "a live owner's chat is not offered; a chat nobody owns is"
        );
        first.persist_all()?;
        drop(first);
        let pending: Vec<u32> = second
            .pending_updates(&counted)?
            .iter()
            .map(|u| u.update_id)
            .collect();
        assert_eq!(pending, vec![7, 5, 6]);
        let of_20: Vec<u32> = second
            .pending_of(&SessionKey::of_chat(ChatId(20)), &counted)?
            .iter()
            .map(|u| u.update_id)
            .collect();
        assert_eq!(of_20, vec![7, 5]);
        assert!(
            second
                .load_chat(&SessionKey::of_chat(ChatId(20)), &counted)
                .is_ok()
        );
        Ok(())
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

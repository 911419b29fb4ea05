//! Business: the Telegram Business connections — which creators connected
//! the bot to their account, what they let it do, and what they chose for
//! their fans (mode, pause, persona) — and the rate limits on fans.
//!
//! - **Supervised by:** root, permanent; started (after the session
//!   supervisor, before the front) only with `business.enabled`.
//! - **Messages:** [`BusinessMsg::Changed`] (a `business_connection` update,
//!   from the front, answered once it is durable), [`BusinessMsg::Get`],
//!   [`BusinessMsg::OwnedBy`], [`BusinessMsg::Configure`] (the creator's
//!   `/mode`, `/pause`, `/resume`, `/persona`), [`BusinessMsg::FanSeen`]
//!   (a fan wrote), [`BusinessMsg::Fans`] (`/fans`), [`BusinessMsg::Edit`]
//!   and [`BusinessMsg::TakeEdit`] (the suggestion a creator is writing
//!   their own reply to: ✏️ Edit, then their next control-room text),
//!   [`BusinessMsg::Charge`] (what a fan's LLM call spent: the creator's
//!   budget), [`BusinessMsg::ForgetFan`] (`/forget <fan>`),
//!   [`BusinessMsg::AdmitFan`] (a fan's message may cost an LLM call),
//!   [`BusinessMsg::Flush`] (timer) and [`BusinessMsg::Reload`] (another
//!   instance stored a change). Callers use [`BusinessHandle`].
//! - **State:** every connection (at most `business.max_connections`), each
//!   with its recently active fans (`business.max_fans_listed`, plus the
//!   fans with a mode of their own), loaded from the store's `business`
//!   setting at start; GCRA limiters per fan and per connection.
//! - **Writes:** a change Telegram or the creator makes is stored before it
//!   is answered, so a `business_connection` update is confirmed to
//!   Telegram only once it is durable, and a creator is told "done" only
//!   when it is. A fan's last activity (for `/fans`) is kept in memory and
//!   stored with the next write or by the `Flush` timer: losing a few
//!   seconds of it to a crash costs nothing.
//! - **Control room:** when a connection is turned on (first stored, or
//!   re-enabled) the creator gets a welcome in their private chat with the
//!   bot, and a short note when it is turned off: cast to the outbox after
//!   the store, so the mailbox never waits on Telegram; best effort.
//! - **Who may connect:** a connection from a user not allowed
//!   (`business.allowed_owner_ids`; empty = the bot admins) is not stored,
//!   counted and logged as a security event: nothing of it is ever acted on.
//! - **Several instances** (a shared store, issue 18): every instance has
//!   this actor, and any of them may store a change (the update or the
//!   creator's command reached it). So with a shared store, each change
//!   first reads the stored connections again and applies itself to them
//!   (keeping the fans seen and the spend charged here since the last
//!   write), and a change stored elsewhere is read again at once
//!   ([`BusinessMsg::Reload`], from the cluster actor's notification): a
//!   connection turned off or losing `can_reply` anywhere stops the drafts
//!   and sends everywhere. Two instances storing at the same moment can
//!   still lose one of the two writes (no lock across instances): the next
//!   `business_connection` update or command repeats it.
//! - **Failures:** restarted by root and reloaded from the store (the fans'
//!   last activity since the last write is lost, and the rate limits start
//!   full). While it is away, lookups **fail closed**: nothing is drafted or
//!   sent for any connection until it is back.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::actors::directory::Address;
use crate::actors::{Child, Directory};
use crate::config::{BusinessMode, Config};
use crate::store::record::{
    BotSetting, ChatUsage, StoredConnection, StoredEdit, StoredFan, StoredMode,
};
use crate::store::{BotKey, StoreError};
use crate::telegram::session_key::{ChatId, SessionKey};
use crate::telemetry::{SecurityKind, security_event};
use crate::texts::Locales;

/// How often the fans' last activity is stored when nothing else was.
const FLUSH_EVERY: Duration = Duration::from_secs(30);

// API

/// Typed operations on the business actor.
#[derive(Clone, Copy)]
pub struct BusinessHandle<'a> {
    directory: &'a Directory,
}

const ADDRESS: Address<BusinessMsg> = Address::new(Child::Business);

impl Directory {
    /// The Telegram Business connections.
    pub fn business(&self) -> BusinessHandle<'_> {
        BusinessHandle { directory: self }
    }
}

impl BusinessHandle<'_> {
    /// Records a `business_connection` update; `Ok` once it is durable (or
    /// refused: [`Accepted::Refused`]). **Fails closed:**
    /// [`StoreError::Unavailable`] when the actor cannot be reached, so the
    /// update is not confirmed to Telegram and comes again.
    pub async fn changed(&self, update: ConnectionUpdate) -> Result<Accepted, StoreError> {
        self.directory
            .call(ADDRESS, |reply| BusinessMsg::Changed {
                update: update.clone(),
                reply,
            })
            .await
            .unwrap_or(Err(StoreError::Unavailable))
    }

    /// The connection `id`, if it is known. **Fails closed:** `None` when
    /// the actor cannot be reached, so nothing is done for it meanwhile.
    pub async fn get(&self, id: &str) -> Option<Connection> {
        self.lookup(id).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "business connections unavailable");
            None
        })
    }

    /// The connection `id` (`Ok(None)` when unknown), or
    /// [`StoreError::Unavailable`] when the actor cannot be reached: the
    /// intake then refuses the batch, so Telegram delivers it again rather
    /// than a fan's message being dropped while the actor restarts.
    pub async fn lookup(&self, id: &str) -> Result<Option<Connection>, StoreError> {
        let id: Arc<str> = id.into();
        self.directory
            .call(ADDRESS, |reply| BusinessMsg::Get {
                id: Arc::clone(&id),
                reply,
            })
            .await
            .map_err(|_| StoreError::Unavailable)
    }

    /// The enabled connections of the creator `owner` (their control room
    /// acts on these). **Fails closed:** empty when unreachable.
    pub async fn owned_by(&self, owner: i64) -> Vec<Connection> {
        self.directory
            .call(ADDRESS, |reply| BusinessMsg::OwnedBy { owner, reply })
            .await
            .unwrap_or_default()
    }

    /// Applies a creator's choice; `Ok(true)` once durable, `Ok(false)` when
    /// the connection (or fan) is unknown.
    pub async fn configure(&self, id: &str, change: Configure) -> Result<bool, StoreError> {
        let id: Arc<str> = id.into();
        self.directory
            .call(ADDRESS, |reply| BusinessMsg::Configure {
                id: Arc::clone(&id),
                change: change.clone(),
                reply,
            })
            .await
            .unwrap_or(Err(StoreError::Unavailable))
    }

    /// Forgets everything the connection `id` keeps about the fan `fan`
    /// (`/forget <fan>` in the control room): their place in `/fans`, their
    /// own mode and pause, and the suggestion being edited for them.
    /// `Ok(true)` once durable, `Ok(false)` when the connection is unknown.
    pub async fn forget_fan(&self, id: &str, fan: i64) -> Result<bool, StoreError> {
        let id: Arc<str> = id.into();
        self.directory
            .call(ADDRESS, |reply| BusinessMsg::ForgetFan {
                id: Arc::clone(&id),
                fan,
                reply,
            })
            .await
            .unwrap_or(Err(StoreError::Unavailable))
    }

    /// Notes that a fan wrote (for `/fans`); best effort.
    pub fn fan_seen(&self, id: &str, fan: i64, name: &str, at: i64) {
        self.directory.cast_now(
            ADDRESS,
            BusinessMsg::FanSeen {
                id: id.into(),
                fan,
                name: name.to_owned(),
                at,
            },
        );
    }

    /// The connection's fans, most recently active first.
    pub async fn fans(&self, id: &str) -> Vec<FanView> {
        let id: Arc<str> = id.into();
        self.directory
            .call(ADDRESS, |reply| BusinessMsg::Fans {
                id: Arc::clone(&id),
                reply,
            })
            .await
            .unwrap_or_default()
    }

    /// Whether a fan's message may cost an LLM call now
    /// (`business.fan_messages_per_minute`,
    /// `business.connection_messages_per_minute`). **Fails closed.**
    pub async fn admit_fan(&self, id: &str, fan: i64) -> bool {
        let id: Arc<str> = id.into();
        self.directory
            .call(ADDRESS, |reply| BusinessMsg::AdmitFan {
                id: Arc::clone(&id),
                fan,
                reply,
            })
            .await
            .unwrap_or(false)
    }

    /// The creator tapped ✏️ Edit under suggestion `seq` for `fan`: their
    /// next text in the control room is the reply. `Ok` once durable.
    pub async fn begin_edit(&self, id: &str, fan: i64, seq: u32) -> Result<(), StoreError> {
        let id: Arc<str> = id.into();
        self.directory
            .call(ADDRESS, |reply| BusinessMsg::Edit {
                id: Arc::clone(&id),
                change: EditChange::Begin { fan, seq },
                reply,
            })
            .await
            .unwrap_or(Err(StoreError::Unavailable))
    }

    /// The suggestion the creator `owner` is writing their own reply to, if
    /// any, taken by the control-room update `update_id` (durably: the same
    /// update delivered again is taken again, any other is not): the
    /// connection, the fan and the suggestion's number. **Fails closed:**
    /// [`StoreError::Unavailable`] when the actor cannot be reached, so the
    /// batch is refused and comes again rather than the creator's reply
    /// going astray.
    pub async fn take_edit(
        &self,
        owner: i64,
        update_id: u32,
    ) -> Result<Option<EditTarget>, StoreError> {
        self.directory
            .call(ADDRESS, |reply| BusinessMsg::TakeEdit {
                owner,
                update_id,
                reply,
            })
            .await
            .unwrap_or(Err(StoreError::Unavailable))
    }

    /// The suggestion `seq` for `fan` is no longer being edited (sent,
    /// skipped, outdated); nothing changes when another one is.
    pub async fn end_edit(&self, id: &str, fan: i64, seq: u32) -> Result<(), StoreError> {
        let id: Arc<str> = id.into();
        self.directory
            .call(ADDRESS, |reply| BusinessMsg::Edit {
                id: Arc::clone(&id),
                change: EditChange::End { fan, seq },
                reply,
            })
            .await
            .unwrap_or(Err(StoreError::Unavailable))
    }

    /// Adds what an LLM call for one of the connection's fans spent to the
    /// creator's budget (`day`: the UTC day, days since the epoch). Best
    /// effort: stored with the next write or by the flush timer, so a crash
    /// forgets at most that many seconds of spend.
    pub fn charge(&self, id: &str, day: u32, tokens: u64, cost: u64) {
        self.directory.cast_now(
            ADDRESS,
            BusinessMsg::Charge {
                id: id.into(),
                day,
                tokens,
                cost,
            },
        );
    }

    /// Another instance stored a change of the connections (a shared
    /// store): read them again. Best effort (the next change reads them
    /// anyway).
    pub fn reload(&self) {
        self.directory.cast_now(ADDRESS, BusinessMsg::Reload);
    }

    /// Makes the actor panic (tests only); `false` if it is not running.
    #[cfg(feature = "chaos")]
    pub fn panic(&self) -> bool {
        self.directory.cast_now(ADDRESS, BusinessMsg::Panic)
    }
}

/// A `business_connection` update, as the front reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionUpdate {
    /// Telegram's connection id.
    pub id: String,
    /// The creator.
    pub owner_user_id: i64,
    /// The creator's private chat with the bot.
    pub owner_chat_id: i64,
    /// `rights.can_reply`.
    pub can_reply: bool,
    /// `is_enabled`.
    pub enabled: bool,
    /// The creator's `language_code` (the control-room notes' language).
    pub language: Option<String>,
}

impl ConnectionUpdate {
    /// The update's fields, from teloxide's type.
    pub fn of(connection: &teloxide::types::BusinessConnection) -> Self {
        Self {
            id: connection.id.0.clone(),
            owner_user_id: i64::try_from(connection.user.id.0).unwrap_or(i64::MAX),
            owner_chat_id: i64::try_from(connection.user_chat_id.0).unwrap_or(i64::MAX),
            can_reply: connection.rights.as_ref().is_some_and(|r| r.can_reply),
            enabled: connection.is_enabled,
            language: connection.user.language_code.clone(),
        }
    }
}

/// What became of a [`ConnectionUpdate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored; the connection is (now) in this state.
    Stored,
    /// Not stored: the owner may not connect the bot, or there are already
    /// `business.max_connections`.
    Refused,
}

/// A creator's choice for a connection or one of its fans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Configure {
    /// `/mode <mode> [fan]`: the connection's mode, or one fan's.
    Mode {
        /// `None` for the connection.
        fan: Option<i64>,
        /// The new mode.
        mode: BusinessMode,
    },
    /// `/pause [fan]` (`true`) and `/resume [fan]` (`false`).
    Paused {
        /// `None` for every fan.
        fan: Option<i64>,
        /// Paused or not.
        paused: bool,
    },
    /// `/persona` in the control room.
    Persona(Option<String>),
}

/// The suggestion a creator is writing their own reply to: the
/// connection, the fan's chat and the suggestion's number.
pub type EditTarget = (Arc<str>, i64, u32);

/// A change to the suggestion a creator is editing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditChange {
    /// ✏️ Edit tapped under suggestion `seq` for `fan`.
    Begin {
        /// The fan's chat.
        fan: i64,
        /// The suggestion.
        seq: u32,
    },
    /// That suggestion is closed.
    End {
        /// The fan's chat.
        fan: i64,
        /// The suggestion.
        seq: u32,
    },
}

/// A connection as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Telegram's connection id.
    pub id: Arc<str>,
    /// The creator.
    pub owner_user_id: i64,
    /// The creator's control room (private chat with the bot).
    pub owner_chat_id: i64,
    /// The bot may send as the creator.
    pub can_reply: bool,
    /// The connection is on.
    pub enabled: bool,
    /// The connection's mode.
    pub mode: BusinessMode,
    /// Every fan paused.
    pub paused: bool,
    /// The persona fans are answered in (`None`: `business.persona`).
    pub persona: Option<String>,
    /// The creator's language (the control room's texts).
    pub language: Option<String>,
    /// What this connection's fans cost today and this month (the
    /// creator's budget), as last counted.
    pub spent: ChatUsage,
    /// Fans with a mode or pause of their own: (chat, mode, paused).
    overrides: Vec<(i64, Option<BusinessMode>, bool)>,
}

impl Connection {
    /// What a message from `fan` gets now: `Off` when the connection is
    /// disabled or paused, or the fan is.
    pub fn mode_for(&self, fan: i64) -> BusinessMode {
        let own = self.overrides.iter().find(|(chat, _, _)| *chat == fan);
        if !self.enabled || self.paused || own.is_some_and(|(_, _, paused)| *paused) {
            return BusinessMode::Off;
        }
        own.and_then(|(_, mode, _)| *mode).unwrap_or(self.mode)
    }

    /// The fans with a mode or pause of their own (`/mode` lists them).
    pub fn own_choices(&self) -> impl Iterator<Item = i64> + '_ {
        self.overrides.iter().map(|(chat, _, _)| *chat)
    }
}

/// A fan as `/fans` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanView {
    /// The fan's chat id.
    pub chat_id: i64,
    /// Their first name.
    pub name: String,
    /// When they last wrote (Unix seconds).
    pub last_at: i64,
    /// What their messages get now.
    pub mode: BusinessMode,
}

/// Messages of the business actor.
pub enum BusinessMsg {
    /// A `business_connection` update.
    Changed {
        /// What Telegram said.
        update: ConnectionUpdate,
        /// Answered once stored (or refused).
        reply: RpcReplyPort<Result<Accepted, StoreError>>,
    },
    /// One connection.
    Get {
        /// Its id.
        id: Arc<str>,
        /// The connection, if known.
        reply: RpcReplyPort<Option<Connection>>,
    },
    /// A creator's enabled connections.
    OwnedBy {
        /// The creator's user id.
        owner: i64,
        /// Their connections.
        reply: RpcReplyPort<Vec<Connection>>,
    },
    /// A creator's choice.
    Configure {
        /// The connection.
        id: Arc<str>,
        /// The choice.
        change: Configure,
        /// `Ok(false)`: unknown connection.
        reply: RpcReplyPort<Result<bool, StoreError>>,
    },
    /// A fan wrote.
    FanSeen {
        /// The connection.
        id: Arc<str>,
        /// The fan's chat.
        fan: i64,
        /// Their first name.
        name: String,
        /// When (Unix seconds).
        at: i64,
    },
    /// `/fans`.
    Fans {
        /// The connection.
        id: Arc<str>,
        /// Its fans, most recent first.
        reply: RpcReplyPort<Vec<FanView>>,
    },
    /// May this fan's message cost an LLM call?
    AdmitFan {
        /// The connection.
        id: Arc<str>,
        /// The fan's chat.
        fan: i64,
        /// The verdict.
        reply: RpcReplyPort<bool>,
    },
    /// ✏️ Edit began or ended.
    Edit {
        /// The connection.
        id: Arc<str>,
        /// Which.
        change: EditChange,
        /// `Ok` once durable.
        reply: RpcReplyPort<Result<(), StoreError>>,
    },
    /// A creator's control-room text: is it the reply they are editing?
    TakeEdit {
        /// The creator.
        owner: i64,
        /// The text's update.
        update_id: u32,
        /// The connection, fan and suggestion, if so.
        reply: RpcReplyPort<Result<Option<EditTarget>, StoreError>>,
    },
    /// An LLM call for a fan spent this.
    Charge {
        /// The connection.
        id: Arc<str>,
        /// The UTC day (days since the epoch).
        day: u32,
        /// Tokens.
        tokens: u64,
        /// Their cost (millionths of the currency unit).
        cost: u64,
    },
    /// Timer: store the fans' activity if it changed.
    Flush,
    /// Another instance stored a change: read the connections again.
    Reload,
    /// `/forget <fan>`: everything kept about one fan goes.
    ForgetFan {
        /// The connection.
        id: Arc<str>,
        /// The fan's chat.
        fan: i64,
        /// `Ok(false)`: unknown connection.
        reply: RpcReplyPort<Result<bool, StoreError>>,
    },
    /// Chaos: panic (tests only).
    #[cfg(feature = "chaos")]
    Panic,
}

// State

/// The business actor.
pub struct Business;

/// What the root gives it.
pub struct BusinessArgs {
    /// The service's configuration.
    pub config: Arc<Config>,
    /// Where the store is.
    pub directory: Directory,
    /// The control-room notes' texts.
    pub locales: Locales,
    /// The store is shared with other instances (PostgreSQL): read the
    /// connections again before each change.
    pub shared: bool,
}

/// The business actor's state.
pub struct BusinessState {
    config: Arc<Config>,
    directory: Directory,
    locales: Locales,
    connections: HashMap<Arc<str>, StoredConnection>,
    per_fan: DefaultKeyedRateLimiter<(Arc<str>, i64)>,
    per_connection: DefaultKeyedRateLimiter<Arc<str>>,
    /// Fans' activity changed since the last write.
    dirty: bool,
    flusher: JoinHandle<()>,
    /// See [`BusinessArgs::shared`].
    shared: bool,
    /// With a shared store, what happened here since the last write, to
    /// apply again to the connections read back: fans seen and spend
    /// charged.
    unsaved: Vec<Unsaved>,
}

/// Something kept in memory until the next write (with a shared store).
#[derive(Debug, Clone)]
enum Unsaved {
    /// A fan wrote.
    Seen {
        id: Arc<str>,
        fan: i64,
        name: String,
        at: i64,
    },
    /// An LLM call for a fan spent this.
    Charged {
        id: Arc<str>,
        day: u32,
        tokens: u64,
        cost: u64,
    },
}

impl Actor for Business {
    type Msg = BusinessMsg;
    type State = BusinessState;
    type Arguments = BusinessArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<BusinessMsg>,
        args: BusinessArgs,
    ) -> Result<BusinessState, ActorProcessingErr> {
        let connections = stored_connections(&args.directory).await?;
        let config = &args.config.business;
        let flusher = {
            let myself = myself.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(FLUSH_EVERY);
                every.tick().await;
                loop {
                    every.tick().await;
                    if myself.cast(BusinessMsg::Flush).is_err() {
                        break;
                    }
                }
            })
        };
        Ok(BusinessState {
            per_fan: RateLimiter::keyed(per_minute(config.fan_messages_per_minute)),
            per_connection: RateLimiter::keyed(per_minute(config.connection_messages_per_minute)),
            config: Arc::clone(&args.config),
            directory: args.directory,
            locales: args.locales,
            connections,
            dirty: false,
            flusher,
            shared: args.shared,
            unsaved: Vec::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<BusinessMsg>,
        state: &mut BusinessState,
    ) -> Result<(), ActorProcessingErr> {
        state.flusher.abort();
        if state.dirty {
            // Best effort: the fans' activity only feeds /fans.
            if let Err(error) = save(state).await {
                tracing::warn!(%error, "fans' activity not stored at stop");
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<BusinessMsg>,
        message: BusinessMsg,
        state: &mut BusinessState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            BusinessMsg::Changed { update, reply } => {
                let _ = reply.send(on_changed(state, update).await);
            }
            BusinessMsg::Get { id, reply } => {
                let _ = reply.send(
                    state
                        .connections
                        .get(&id)
                        .map(|c| view(c, state.config.business.mode)),
                );
            }
            BusinessMsg::OwnedBy { owner, reply } => {
                let mut owned: Vec<Connection> = state
                    .connections
                    .values()
                    .filter(|c| c.owner_user_id == owner && c.enabled)
                    .map(|c| view(c, state.config.business.mode))
                    .collect();
                owned.sort_by(|a, b| a.id.cmp(&b.id));
                let _ = reply.send(owned);
            }
            BusinessMsg::Configure { id, change, reply } => {
                let _ = reply.send(on_configure(state, &id, change).await);
            }
            BusinessMsg::FanSeen { id, fan, name, at } => on_fan_seen(state, &id, fan, name, at),
            BusinessMsg::Fans { id, reply } => {
                let _ = reply.send(fans(state, &id));
            }
            BusinessMsg::AdmitFan { id, fan, reply } => {
                let admitted = state.per_connection.check_key(&id).is_ok()
                    && state.per_fan.check_key(&(Arc::clone(&id), fan)).is_ok();
                if !admitted {
                    tracing::info!(fan, "fan over the business rate limit");
                }
                let _ = reply.send(admitted);
            }
            BusinessMsg::Edit { id, change, reply } => {
                let _ = reply.send(on_edit(state, &id, change).await);
            }
            BusinessMsg::TakeEdit {
                owner,
                update_id,
                reply,
            } => {
                let _ = reply.send(on_take_edit(state, owner, update_id).await);
            }
            BusinessMsg::Charge {
                id,
                day,
                tokens,
                cost,
            } => {
                if apply_charge(state, &id, day, tokens, cost) {
                    state.dirty = true;
                    if state.shared {
                        state.unsaved.push(Unsaved::Charged {
                            id,
                            day,
                            tokens,
                            cost,
                        });
                    }
                }
            }
            BusinessMsg::ForgetFan { id, fan, reply } => {
                let _ = reply.send(on_forget_fan(state, &id, fan).await);
            }
            BusinessMsg::Flush => {
                if state.dirty {
                    refresh(state).await?;
                    save(state).await?;
                }
                state.per_fan.retain_recent();
                state.per_connection.retain_recent();
            }
            BusinessMsg::Reload => {
                if let Err(error) = refresh(state).await {
                    tracing::warn!(%error, "business connections not read again; the next change reads them");
                }
            }
            #[cfg(feature = "chaos")]
            BusinessMsg::Panic => panic!("chaos: business ordered to panic"),
        }
        Ok(())
    }
}

// Handlers

/// A `business_connection` update: stored if its owner may connect.
async fn on_changed(
    state: &mut BusinessState,
    update: ConnectionUpdate,
) -> Result<Accepted, StoreError> {
    refresh(state).await?;
    let config = &state.config.business;
    if !config.may_connect(&state.config.admin_ids, update.owner_user_id) {
        security_event(SecurityKind::BusinessOwnerDenied);
        tracing::warn!(
            owner = update.owner_user_id,
            "business connection from a user not in business.allowed_owner_ids; ignored"
        );
        return Ok(Accepted::Refused);
    }
    let id: Arc<str> = update.id.as_str().into();
    let before = state.connections.get(&id).cloned();
    let was_enabled = before.as_ref().is_some_and(|before| before.enabled);
    if before.is_none() && state.connections.len() >= config.max_connections {
        tracing::warn!(
            owner = update.owner_user_id,
            "business.max_connections reached; connection ignored"
        );
        return Ok(Accepted::Refused);
    }
    let connection = state
        .connections
        .entry(Arc::clone(&id))
        .or_insert_with(|| StoredConnection {
            id: update.id.clone(),
            owner_user_id: update.owner_user_id,
            owner_chat_id: update.owner_chat_id,
            can_reply: false,
            enabled: false,
            mode: None,
            paused: false,
            persona: None,
            fans: Vec::new(),
            editing: None,
            language: None,
            spent: ChatUsage::default(),
        });
    connection.owner_user_id = update.owner_user_id;
    connection.owner_chat_id = update.owner_chat_id;
    connection.can_reply = update.can_reply;
    connection.enabled = update.enabled;
    connection.language.clone_from(&update.language);
    tracing::info!(
        owner = update.owner_user_id,
        enabled = update.enabled,
        can_reply = update.can_reply,
        "business connection updated"
    );
    if let Err(error) = save(state).await {
        // Not stored: as if it never came (Telegram sends it again).
        match before {
            Some(before) => state.connections.insert(id, before),
            None => state.connections.remove(&id),
        };
        return Err(error);
    }
    if update.enabled != was_enabled {
        notify_owner(state, &update);
    }
    Ok(Accepted::Stored)
}

/// Tells the creator, in their control room, that the connection was turned
/// on (a welcome with the modes and commands) or off. Best effort, through
/// the outbox without waiting: the mailbox never waits on Telegram, and a
/// note lost to a restart costs nothing (the connection itself is stored).
fn notify_owner(state: &BusinessState, update: &ConnectionUpdate) {
    let texts = state.locales.for_language(update.language.as_deref());
    let text = if update.enabled {
        &texts.biz_welcome
    } else {
        &texts.biz_disabled
    };
    tracing::info!(
        owner = update.owner_user_id,
        enabled = update.enabled,
        "control room told of the connection"
    );
    state
        .directory
        .outbox()
        .notify(&SessionKey::of_chat(ChatId(update.owner_chat_id)), text);
}

/// A creator's choice, stored before it is confirmed.
async fn on_configure(
    state: &mut BusinessState,
    id: &Arc<str>,
    change: Configure,
) -> Result<bool, StoreError> {
    refresh(state).await?;
    let Some(connection) = state.connections.get_mut(id) else {
        return Ok(false);
    };
    let before = connection.clone();
    match change {
        Configure::Mode { fan: None, mode } => connection.mode = Some(stored_mode(mode)),
        Configure::Paused { fan: None, paused } => {
            connection.paused = paused;
            if !paused {
                // /resume for everyone also resumes each paused fan.
                for fan in &mut connection.fans {
                    fan.paused = false;
                }
            }
        }
        Configure::Mode {
            fan: Some(chat),
            mode,
        } => {
            fan_entry(connection, chat).mode = Some(stored_mode(mode));
        }
        Configure::Paused {
            fan: Some(chat),
            paused,
        } => fan_entry(connection, chat).paused = paused,
        Configure::Persona(persona) => connection.persona = persona,
    }
    if let Err(error) = save(state).await {
        state.connections.insert(Arc::clone(id), before);
        return Err(error);
    }
    Ok(true)
}

/// ✏️ Edit began (replacing any earlier one: a creator writes one reply at
/// a time) or ended; stored before it is confirmed.
async fn on_edit(
    state: &mut BusinessState,
    id: &Arc<str>,
    change: EditChange,
) -> Result<(), StoreError> {
    refresh(state).await?;
    let Some(connection) = state.connections.get_mut(id) else {
        return Ok(());
    };
    let before = connection.editing;
    connection.editing = match change {
        EditChange::Begin { fan, seq } => Some(StoredEdit {
            fan,
            seq,
            taken_by: None,
        }),
        EditChange::End { fan, seq } => before.filter(|edit| edit.fan != fan || edit.seq != seq),
    };
    if connection.editing == before {
        return Ok(());
    }
    if let Err(error) = save(state).await {
        if let Some(connection) = state.connections.get_mut(id) {
            connection.editing = before;
        }
        return Err(error);
    }
    Ok(())
}

/// A creator's control-room text: taken as the reply they are editing, if
/// they are (the first such update, or the same one delivered again).
async fn on_take_edit(
    state: &mut BusinessState,
    owner: i64,
    update_id: u32,
) -> Result<Option<EditTarget>, StoreError> {
    refresh(state).await?;
    let Some((id, edit)) = state
        .connections
        .iter()
        .filter(|(_, c)| c.owner_user_id == owner && c.enabled)
        .find_map(|(id, c)| Some((Arc::clone(id), c.editing?)))
    else {
        return Ok(None);
    };
    match edit.taken_by {
        Some(taken) if taken == update_id => return Ok(Some((id, edit.fan, edit.seq))),
        Some(_) => return Ok(None),
        None => {}
    }
    if let Some(connection) = state.connections.get_mut(&id) {
        connection.editing = Some(StoredEdit {
            taken_by: Some(update_id),
            ..edit
        });
    }
    if let Err(error) = save(state).await {
        if let Some(connection) = state.connections.get_mut(&id) {
            connection.editing = Some(edit);
        }
        return Err(error);
    }
    Ok(Some((id, edit.fan, edit.seq)))
}

/// `/forget <fan>`: the fan leaves the connection's list with their own
/// mode and pause (they follow the connection again), and a suggestion
/// for them being edited is no longer; stored before it is confirmed.
async fn on_forget_fan(
    state: &mut BusinessState,
    id: &Arc<str>,
    fan: i64,
) -> Result<bool, StoreError> {
    refresh(state).await?;
    let Some(connection) = state.connections.get_mut(id) else {
        return Ok(false);
    };
    let before = connection.clone();
    connection.fans.retain(|entry| entry.chat_id != fan);
    if connection.editing.is_some_and(|editing| editing.fan == fan) {
        connection.editing = None;
    }
    if let Err(error) = save(state).await {
        state.connections.insert(Arc::clone(id), before);
        return Err(error);
    }
    tracing::info!(connection = %id, fan, "fan forgotten");
    Ok(true)
}

/// A fan wrote: kept first in the connection's list.
fn on_fan_seen(state: &mut BusinessState, id: &Arc<str>, fan: i64, name: String, at: i64) {
    if state.shared && state.connections.contains_key(id) {
        state.unsaved.push(Unsaved::Seen {
            id: Arc::clone(id),
            fan,
            name: name.clone(),
            at,
        });
    }
    if apply_seen(state, id, fan, name, at) {
        state.dirty = true;
    }
}

/// Puts a fan first in the connection's list; `false` if the connection is
/// unknown.
fn apply_seen(state: &mut BusinessState, id: &Arc<str>, fan: i64, name: String, at: i64) -> bool {
    let max = state.config.business.max_fans_listed;
    let Some(connection) = state.connections.get_mut(id) else {
        return false;
    };
    let entry = fan_entry(connection, fan);
    entry.name = name;
    entry.last_at = entry.last_at.max(at);
    bound_fans(connection, max);
    true
}

/// The connections as stored, by id.
async fn stored_connections(
    directory: &Directory,
) -> Result<HashMap<Arc<str>, StoredConnection>, StoreError> {
    let stored = match directory
        .persistence()
        .load_setting(BotKey::Business)
        .await?
    {
        Some(BotSetting::Business(connections)) => connections,
        _ => Vec::new(),
    };
    Ok(stored
        .into_iter()
        .map(|connection| (Arc::from(connection.id.as_str()), connection))
        .collect())
}

/// Adds an LLM call's spend to the connection; `false` if it is unknown.
fn apply_charge(
    state: &mut BusinessState,
    id: &Arc<str>,
    day: u32,
    tokens: u64,
    cost: u64,
) -> bool {
    let Some(connection) = state.connections.get_mut(id) else {
        return false;
    };
    connection.spent.add(day, tokens, cost);
    true
}

/// With a shared store, reads the connections again (another instance may
/// have stored a change) and applies what happened here since the last
/// write on top. Nothing to do when only this instance writes.
async fn refresh(state: &mut BusinessState) -> Result<(), StoreError> {
    if !state.shared {
        return Ok(());
    }
    state.connections = stored_connections(&state.directory).await?;
    for unsaved in state.unsaved.clone() {
        match unsaved {
            Unsaved::Seen { id, fan, name, at } => {
                apply_seen(state, &id, fan, name, at);
            }
            Unsaved::Charged {
                id,
                day,
                tokens,
                cost,
            } => {
                apply_charge(state, &id, day, tokens, cost);
            }
        }
    }
    Ok(())
}

/// The connection's fans, most recently active first.
fn fans(state: &BusinessState, id: &Arc<str>) -> Vec<FanView> {
    let Some(connection) = state.connections.get(id) else {
        return Vec::new();
    };
    let view = view(connection, state.config.business.mode);
    let mut fans: Vec<FanView> = connection
        .fans
        .iter()
        .map(|fan| FanView {
            chat_id: fan.chat_id,
            name: fan.name.clone(),
            last_at: fan.last_at,
            mode: view.mode_for(fan.chat_id),
        })
        .collect();
    fans.sort_by(|a, b| b.last_at.cmp(&a.last_at).then(a.chat_id.cmp(&b.chat_id)));
    fans.truncate(state.config.business.max_fans_listed);
    fans
}

/// The fan's entry, created when missing.
fn fan_entry(connection: &mut StoredConnection, chat: i64) -> &mut StoredFan {
    let index = match connection.fans.iter().position(|fan| fan.chat_id == chat) {
        Some(index) => index,
        None => {
            connection.fans.push(StoredFan {
                chat_id: chat,
                name: String::new(),
                last_at: 0,
                mode: None,
                paused: false,
            });
            connection.fans.len() - 1
        }
    };
    &mut connection.fans[index]
}

/// Keeps the `max` most recently active fans, and every fan with a choice
/// of their own (the creator made it; it must not vanish).
fn bound_fans(connection: &mut StoredConnection, max: usize) {
    let own_choice = |fan: &StoredFan| fan.mode.is_some() || fan.paused;
    let mut plain: Vec<(i64, i64)> = connection
        .fans
        .iter()
        .filter(|fan| !own_choice(fan))
        .map(|fan| (fan.last_at, fan.chat_id))
        .collect();
    if plain.len() <= max {
        return;
    }
    plain.sort_unstable_by(|a, b| b.cmp(a));
    let dropped: Vec<i64> = plain[max..].iter().map(|(_, chat)| *chat).collect();
    connection
        .fans
        .retain(|fan| own_choice(fan) || !dropped.contains(&fan.chat_id));
}

/// Stores every connection.
async fn save(state: &mut BusinessState) -> Result<(), StoreError> {
    let mut connections: Vec<StoredConnection> = state.connections.values().cloned().collect();
    connections.sort_by(|a, b| a.id.cmp(&b.id));
    state
        .directory
        .persistence()
        .save_setting(BotKey::Business, &BotSetting::Business(connections))
        .await?;
    state.dirty = false;
    state.unsaved.clear();
    Ok(())
}

/// What callers see of a stored connection; `configured` is
/// `business.mode`, which a connection follows until its creator picks a
/// mode (so a changed config reaches connections made before).
fn view(stored: &StoredConnection, configured: BusinessMode) -> Connection {
    Connection {
        id: stored.id.as_str().into(),
        owner_user_id: stored.owner_user_id,
        owner_chat_id: stored.owner_chat_id,
        can_reply: stored.can_reply,
        enabled: stored.enabled,
        mode: stored.mode.map_or(configured, config_mode),
        paused: stored.paused,
        persona: stored.persona.clone(),
        language: stored.language.clone(),
        spent: stored.spent,
        overrides: stored
            .fans
            .iter()
            .filter(|fan| fan.mode.is_some() || fan.paused)
            .map(|fan| (fan.chat_id, fan.mode.map(config_mode), fan.paused))
            .collect(),
    }
}

fn stored_mode(mode: BusinessMode) -> StoredMode {
    match mode {
        BusinessMode::Draft => StoredMode::Draft,
        BusinessMode::Auto => StoredMode::Auto,
        BusinessMode::Off => StoredMode::Off,
    }
}

fn config_mode(mode: StoredMode) -> BusinessMode {
    match mode {
        StoredMode::Draft => BusinessMode::Draft,
        StoredMode::Auto => BusinessMode::Auto,
        StoredMode::Off => BusinessMode::Off,
    }
}

/// A quota of `n` per minute (validated positive).
fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

#[cfg(test)]
mod tests {
    use ractor::Actor;

    use super::*;
    use crate::actors::test_support::{self, TestDeps};

    const CONFIG: &str = "admin_ids = [7]\nbusiness.enabled = true\n\
                          business.fan_messages_per_minute = 2\n\
                          business.max_fans_listed = 2\n";

    async fn start(t: &TestDeps) -> ActorRef<BusinessMsg> {
        start_on(t, false).await
    }

    /// `shared`: as on a store other instances write too.
    async fn start_on(t: &TestDeps, shared: bool) -> ActorRef<BusinessMsg> {
        let (actor, _) = Actor::spawn(
            Some(t.deps.directory.name(Child::Business)),
            Business,
            BusinessArgs {
                config: Arc::clone(&t.deps.config),
                directory: t.deps.directory.clone(),
                locales: t.deps.locales.clone(),
                shared,
            },
        )
        .await
        .expect("business starts");
        actor
    }

    /// What another instance stores: the connections, as it sees them.
    async fn stored_elsewhere(t: &TestDeps, connections: Vec<StoredConnection>) {
        t.deps
            .directory
            .persistence()
            .save_setting(BotKey::Business, &BotSetting::Business(connections))
            .await
            .unwrap();
    }

    async fn stored(t: &TestDeps) -> Vec<StoredConnection> {
        match t
            .deps
            .directory
            .persistence()
            .load_setting(BotKey::Business)
            .await
            .unwrap()
        {
            Some(BotSetting::Business(connections)) => connections,
            other => panic!("no connections stored: {other:?}"),
        }
    }

    /// With a shared store: a connection stored by another instance is
    /// known here once announced, a connection turned off there is off
    /// here, and a change made here applies to what the others stored
    /// (their persona stays), keeping the fans seen and the spend charged
    /// here since the last write.
    #[tokio::test]
    async fn with_a_shared_store_changes_made_elsewhere_are_read_and_kept() {
        let t = test_support::deps("business-shared", CONFIG);
        t.start_persistence().await;
        start_on(&t, true).await;
        let business = t.deps.directory.business();
        assert_eq!(business.get("conn-7").await, None);

        let elsewhere = |enabled: bool, persona: Option<&str>| StoredConnection {
            id: "conn-7".into(),
            owner_user_id: 7,
            owner_chat_id: 7,
            can_reply: true,
            enabled,
            mode: None,
            paused: false,
            persona: persona.map(str::to_owned),
            fans: Vec::new(),
            editing: None,
            language: None,
            spent: ChatUsage::default(),
        };
        stored_elsewhere(&t, vec![elsewhere(true, None)]).await;
        business.reload();
        assert!(business.get("conn-7").await.is_some_and(|c| c.enabled));

        stored_elsewhere(&t, vec![elsewhere(false, None)]).await;
        business.reload();
        assert!(business.get("conn-7").await.is_some_and(|c| !c.enabled));

        // Seen and charged here, then a persona chosen elsewhere (not yet
        // announced), then a mode chosen here.
        business.fan_seen("conn-7", 100, "Ann", 1_000);
        business.charge("conn-7", 20_000, 30, 5);
        stored_elsewhere(&t, vec![elsewhere(true, Some("pirate"))]).await;
        let auto = Configure::Mode {
            fan: None,
            mode: BusinessMode::Auto,
        };
        assert_eq!(business.configure("conn-7", auto).await, Ok(true));
        let [kept] = stored(&t).await.try_into().unwrap();
        assert_eq!(kept.persona.as_deref(), Some("pirate"), "not overwritten");
        assert!(kept.enabled);
        assert_eq!(kept.mode, Some(StoredMode::Auto));
        assert_eq!(kept.fans.len(), 1, "the fan seen here");
        assert_eq!(kept.spent.tokens_today, 30, "the spend charged here");
        assert_eq!(
            business.get("conn-7").await.unwrap().mode_for(100),
            BusinessMode::Auto
        );
    }

    fn connection(owner: i64, enabled: bool) -> ConnectionUpdate {
        ConnectionUpdate {
            id: format!("conn-{owner}"),
            owner_user_id: owner,
            owner_chat_id: owner,
            can_reply: true,
            enabled,
            language: None,
        }
    }

    #[tokio::test]
    async fn only_allowed_owners_connect_and_choices_survive_a_restart() {
        let t = test_support::deps("business-owners", CONFIG);
        t.start_persistence().await;
        let actor = start(&t).await;
        let business = t.deps.directory.business();

        // Not an admin (the allowed list is empty): refused, not stored.
        assert_eq!(
            business.changed(connection(99, true)).await,
            Ok(Accepted::Refused)
        );
        assert_eq!(business.get("conn-99").await, None);

        assert_eq!(
            business.changed(connection(7, true)).await,
            Ok(Accepted::Stored)
        );
        let stored = business.get("conn-7").await.unwrap();
        assert_eq!(stored.mode_for(100), BusinessMode::Draft);
        assert_eq!(business.owned_by(7).await.len(), 1);

        // A fan of their own: auto; everyone else paused.
        let auto = Configure::Mode {
            fan: Some(100),
            mode: BusinessMode::Auto,
        };
        assert_eq!(business.configure("conn-7", auto).await, Ok(true));
        assert_eq!(
            business.get("conn-7").await.unwrap().mode_for(100),
            BusinessMode::Auto
        );
        let pause = Configure::Paused {
            fan: Some(101),
            paused: true,
        };
        assert_eq!(business.configure("conn-7", pause).await, Ok(true));
        assert_eq!(
            business.get("conn-7").await.unwrap().mode_for(101),
            BusinessMode::Off
        );
        assert_eq!(
            business.configure("conn-8", Configure::Persona(None)).await,
            Ok(false),
            "unknown connection"
        );

        // Restarted: everything read back from the store.
        actor.stop(None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        start(&t).await;
        let again = business.get("conn-7").await.unwrap();
        assert_eq!(again.mode_for(100), BusinessMode::Auto);
        assert_eq!(again.mode_for(101), BusinessMode::Off);
        assert_eq!(again.mode_for(102), BusinessMode::Draft);

        // Disabled by the creator: nothing for anyone, and not in the
        // creator's list.
        assert_eq!(
            business.changed(connection(7, false)).await,
            Ok(Accepted::Stored)
        );
        assert_eq!(
            business.get("conn-7").await.unwrap().mode_for(100),
            BusinessMode::Off
        );
        assert!(business.owned_by(7).await.is_empty());
    }

    #[tokio::test]
    async fn fans_are_listed_newest_first_bounded_and_rate_limited() {
        let t = test_support::deps("business-fans", CONFIG);
        t.start_persistence().await;
        start(&t).await;
        let business = t.deps.directory.business();
        business.changed(connection(7, true)).await.unwrap();
        let own = Configure::Mode {
            fan: Some(1),
            mode: BusinessMode::Off,
        };
        business.configure("conn-7", own).await.unwrap();
        for (fan, at) in [(1, 10), (2, 20), (3, 30), (4, 40)] {
            business.fan_seen("conn-7", fan, &format!("fan {fan}"), at);
        }
        let fans = business.fans("conn-7").await;
        let listed: Vec<i64> = fans.iter().map(|fan| fan.chat_id).collect();
        assert_eq!(listed, [4, 3], "the two most recent");
        assert_eq!(fans[0].name, "fan 4");

        // Two a minute per fan; another fan has their own allowance.
        assert!(business.admit_fan("conn-7", 2).await);
        assert!(business.admit_fan("conn-7", 2).await);
        assert!(!business.admit_fan("conn-7", 2).await);
        assert!(business.admit_fan("conn-7", 3).await);
    }

    async fn start_with(t: &TestDeps, config: Config) -> ActorRef<BusinessMsg> {
        let (actor, _) = Actor::spawn(
            Some(t.deps.directory.name(Child::Business)),
            Business,
            BusinessArgs {
                config: Arc::new(config),
                directory: t.deps.directory.clone(),
                locales: t.deps.locales.clone(),
                shared: false,
            },
        )
        .await
        .expect("business starts");
        actor
    }

    #[tokio::test]
    async fn a_connection_follows_the_configured_mode_until_its_creator_picks_one() {
        let t = test_support::deps("business-follows", CONFIG);
        t.start_persistence().await;
        let mut config = (*t.deps.config).clone();
        config.business.mode = BusinessMode::Draft;
        let actor = start_with(&t, config.clone()).await;
        let business = t.deps.directory.business();
        business.changed(connection(7, true)).await.unwrap();
        assert_eq!(
            business.get("conn-7").await.unwrap().mode_for(100),
            BusinessMode::Draft
        );

        // The operator changes business.mode: the connection follows.
        actor.stop(None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        config.business.mode = BusinessMode::Auto;
        let actor = start_with(&t, config.clone()).await;
        let connection_now = business.get("conn-7").await.unwrap();
        assert_eq!(connection_now.mode, BusinessMode::Auto);
        assert_eq!(connection_now.mode_for(100), BusinessMode::Auto);

        // The creator picks one: it sticks whatever the config says.
        let off = Configure::Mode {
            fan: None,
            mode: BusinessMode::Off,
        };
        assert_eq!(business.configure("conn-7", off).await, Ok(true));
        actor.stop(None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        config.business.mode = BusinessMode::Draft;
        start_with(&t, config).await;
        assert_eq!(
            business.get("conn-7").await.unwrap().mode_for(100),
            BusinessMode::Off
        );
    }

    #[tokio::test]
    async fn a_forgotten_fan_leaves_the_list_with_their_own_choices() {
        let t = test_support::deps("business-forget", CONFIG);
        t.start_persistence().await;
        let actor = start(&t).await;
        let business = t.deps.directory.business();
        business.changed(connection(7, true)).await.unwrap();
        business.fan_seen("conn-7", 100, "fan", 10);
        business.fan_seen("conn-7", 101, "other", 20);
        let auto = Configure::Mode {
            fan: Some(100),
            mode: BusinessMode::Auto,
        };
        business.configure("conn-7", auto).await.unwrap();

        assert_eq!(business.forget_fan("conn-7", 100).await, Ok(true));
        assert_eq!(business.forget_fan("conn-8", 100).await, Ok(false));
        let listed: Vec<i64> = business
            .fans("conn-7")
            .await
            .iter()
            .map(|fan| fan.chat_id)
            .collect();
        assert_eq!(listed, [101]);
        let connection_now = business.get("conn-7").await.unwrap();
        assert_eq!(connection_now.mode_for(100), BusinessMode::Draft);
        assert_eq!(connection_now.own_choices().count(), 0);

        // Durable: the same after a restart.
        actor.stop(None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        start(&t).await;
        assert_eq!(
            business.get("conn-7").await.unwrap().own_choices().count(),
            0
        );
    }

    #[test]
    fn a_fan_with_a_choice_of_their_own_is_never_dropped() {
        let fan = |chat_id, last_at, mode| StoredFan {
            chat_id,
            name: String::new(),
            last_at,
            mode,
            paused: false,
        };
        let mut connection = StoredConnection {
            id: "c".into(),
            owner_user_id: 1,
            owner_chat_id: 1,
            can_reply: true,
            enabled: true,
            mode: Some(StoredMode::Draft),
            paused: false,
            persona: None,
            editing: None,
            language: None,
            spent: ChatUsage::default(),
            fans: vec![
                fan(1, 1, Some(StoredMode::Auto)),
                fan(2, 2, None),
                fan(3, 3, None),
                fan(4, 4, None),
            ],
        };
        bound_fans(&mut connection, 2);
        let kept: Vec<i64> = connection.fans.iter().map(|f| f.chat_id).collect();
        assert_eq!(kept, [1, 3, 4]);
    }
}

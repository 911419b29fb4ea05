//! The supervision tree. Every actor lives in the file that matches its place
//! in the tree:
//!
//! ```text
//! root                          actors/root.rs                supervisor; the child-spec table
//! ├── persistence               root/persistence.rs           permanent (+ its writer thread)
//! ├── breaker.0 … breaker.N     root/breaker.rs               permanent, one per LLM provider
//! ├── limiter                   root/limiter.rs               permanent
//! ├── llm_pool                  root/llm_pool.rs              permanent
//! ├── outbox                    root/outbox.rs                permanent
//! ├── session_sup               root/session_sup.rs           permanent; supervisor
//! │   └── session (one a chat)  root/session_sup/session.rs   transient, redelivered
//! └── front: ingress | webhook  root/ingress.rs, root/webhook.rs   permanent, by telegram.mode
//! ```
//!
//! The front ends' shared intake and the console front are not actors; they
//! live in [`crate::front`].
//!
//! Long-lived actors are registered under fixed names (see [`directory`]) and
//! looked up on use, so a caller never holds a reference to an actor that has
//! been restarted. Sessions are not named: only the session supervisor routes
//! to them. `supervision.md` at the repository root explains the policy.

pub mod directory;
pub mod root;
#[cfg(test)]
pub(crate) mod test_support;

pub use directory::{Child, Directory};

//! One file per behaviour.

mod bad_input;
mod binary;
mod bursts;
mod commands;
mod console;
mod conversation;
mod eviction;
mod groups;
mod hardening_content;
mod hardening_groups;
mod hardening_limits;
mod hardening_listeners;
mod hardening_ops;
mod hardening_polling;
mod hardening_sessions;
mod hardening_startup;
mod isolation;
mod long_answer;
mod operations;
mod ordering;
mod persistence;
mod protection;
mod resilience;
mod restarts;
mod slow_chat;
mod streaming;

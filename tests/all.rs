//! End-to-end tests: the real service, started in-process through
//! `llmgram::app::start`, talks over HTTP to a fake Telegram Bot API and a
//! fake OpenAI-compatible server on 127.0.0.1 (crate `llmgram-fakes`).
//! Nothing of llmgram itself is mocked.

// Test helpers outside #[test] functions abort the test on a failed setup.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod suite;

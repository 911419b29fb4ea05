//! Resilience: classified LLM errors, retries, the circuit breaker, the
//! fallback chain, and actors panicking under load.

use std::time::{Duration, Instant};

use llmgram::actors::Child;
use llmgram::actors::root::breaker::BreakerStatus;
use llmgram::chaos;
use llmgram::telegram::inbound::ChatId;
use llmgram_fakes::{FakeLlm, LlmReply, LlmReplyKind};

use crate::common::{FAST_BREAKER, Harness, WAIT, eventually};

async fn breaker_status(h: &Harness, index: u8) -> BreakerStatus {
    h.service
        .directory()
        .breaker(usize::from(index))
        .status()
        .await
        .expect("breaker answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_its_retry_after_then_succeeds() {
    let h = Harness::start().await;
    h.llm.script(vec![LlmReply::status(429, Some(1))]);
    h.say(1, "patience");
    let replies = h.replies(1, 1).await;
    assert_eq!(replies[0].text, "answer to: patience");
    let requests = h.llm.requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at.duration_since(requests[0].at);
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_500s_then_an_answer() {
    let h = Harness::start().await;
    h.llm.script(vec![
        LlmReply::status(500, None),
        LlmReply::status(503, None),
    ]);
    h.say(2, "eventually");
    assert_eq!(h.replies(2, 1).await[0].text, "answer to: eventually");
    assert_eq!(h.llm.request_count(), 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_rejections_get_a_clear_reply_and_401_is_not_retried() {
    let h = Harness::start().await;
    let cases = [
        (LlmReply::now(LlmReplyKind::InvalidJson), 3),
        (LlmReply::now(LlmReplyKind::NoChoices), 3),
        (LlmReply::status(401, None), 1),
    ];
    let mut calls = 0;
    for (chat, (reply, attempts)) in (10..).zip(cases) {
        h.llm.script(vec![reply; attempts]);
        h.say(chat, "hello");
        let answer = &h.replies(chat, 1).await[0].text;
        assert!(answer.contains("can't answer"), "{answer}");
        calls += attempts;
        assert_eq!(
            h.llm.request_count(),
            calls,
            "chat {chat}: {attempts} calls"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_provider_opens_the_breaker_which_recovers() {
    let h = Harness::start_with(FAST_BREAKER).await;
    h.llm.set_responder(|_| LlmReply::now(LlmReplyKind::Hang));
    // Two timeouts reach the threshold.
    h.say(20, "first");
    h.replies(20, 1).await;
    h.say(21, "second");
    h.replies(21, 1).await;
    assert!(matches!(
        breaker_status(&h, 0).await,
        BreakerStatus::Open { .. }
    ));
    let calls_when_opened = h.llm.request_count();
    assert_eq!(calls_when_opened, 2);

    // While open: no call reaches the provider, and the fallback is fast.
    let update = h.say(22, "while open");
    let reply = h.replies(22, 1).await.remove(0);
    assert!(reply.text.contains("try again in about"), "{}", reply.text);
    let delivered = h.telegram.delivered_at(update).unwrap();
    let took = reply.at.duration_since(delivered);
    assert!(took < Duration::from_millis(100), "fallback took {took:?}");
    assert_eq!(h.llm.request_count(), calls_when_opened);

    // After open_for one probe goes through; the provider has recovered.
    h.llm
        .set_responder(|r| LlmReply::text(format!("answer to: {}", r.last_user_message())));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    h.say(23, "probe");
    assert_eq!(h.replies(23, 1).await[0].text, "answer to: probe");
    assert_eq!(breaker_status(&h, 0).await, BreakerStatus::Closed);
    h.say(24, "normal again");
    assert_eq!(h.replies(24, 1).await[0].text, "answer to: normal again");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_provider_answers_when_the_primary_is_down() {
    let backup = FakeLlm::start().await;
    backup.set_responder(|r| LlmReply::text(format!("backup: {}", r.last_user_message())));
    let h = Harness::start_with(&format!(
        "llm.retry.max_attempts = 2\n\
         [[llm.fallback]]\n\
         name = \"backup\"\n\
         base_url = \"{}\"\n\
         model = \"backup-model\"\n",
        backup.base_url()
    ))
    .await;
    h.llm.set_responder(|_| LlmReply::status(503, None));
    for chat in 30..35 {
        h.say(chat, "anyone there?");
    }
    for chat in 30..35 {
        assert_eq!(h.replies(chat, 1).await[0].text, "backup: anyone there?");
    }
    assert!(backup.requests().iter().all(|r| r.model == "backup-model"));
    assert_eq!(backup.request_count(), 5);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_panicking_with_five_queued_messages_answers_each_once_in_order() {
    let h = Harness::start().await;
    h.llm.set_latency(Duration::from_millis(300));
    for i in 0..6 {
        h.say(40, &format!("m{i}"));
    }
    h.llm.wait_for_requests(1, WAIT).await;
    // m0 is with the LLM; the session panics when it starts m1, with m1–m5
    // waiting in its mailbox.
    chaos::panic_session(h.service.directory(), ChatId(40));
    let replies = h.replies(40, 6).await;
    let texts: Vec<&str> = replies.iter().map(|r| r.text.as_str()).collect();
    let want: Vec<String> = (0..6).map(|i| format!("answer to: m{i}")).collect();
    assert_eq!(texts, want);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.telegram.sent_to(40).len(), 6, "exactly once");
    let stats = h.service.session_stats().await.unwrap();
    assert_eq!(stats.restarted, 1);
    // Other chats never noticed.
    h.say(41, "unaffected");
    assert_eq!(h.replies(41, 1).await[0].text, "answer to: unaffected");
    h.stop().await;
}

/// A small deterministic pseudo-random sequence (no dependency needed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_long_lived_actor_panics_five_times_and_no_message_is_lost() {
    const CHATS: i64 = 100;
    const MESSAGES: usize = 10;
    const PANICS: u64 = 5;
    let h = Harness::start_with("supervision.max_restarts = 10\n").await;
    h.llm.set_latency(Duration::from_millis(30));
    for message in 0..MESSAGES {
        for chat in 1..=CHATS {
            h.say(chat, &format!("c{chat} m{message}"));
        }
    }

    let victims = [
        Child::Persistence,
        Child::Breaker(0),
        Child::Limiter,
        Child::LlmPool,
        Child::Outbox,
        Child::SessionSup,
        Child::Front,
    ];
    let mut random = Lcg(0x5eed);
    let started = Instant::now();
    for round in 1..=PANICS {
        for victim in victims {
            tokio::time::sleep(Duration::from_millis(10 + random.below(60))).await;
            // Wait until the previous restart is done, so each panic counts.
            eventually("the victim to be back", || async {
                chaos::panic_child(h.service.directory(), victim)
            })
            .await;
            eventually("the restart", || async {
                let status = h.service.tree_status().await.unwrap();
                let line = status.children.iter().find(|c| c.child == victim).unwrap();
                line.restarts == round && line.alive
            })
            .await;
        }
    }
    let chaos_took = started.elapsed();

    let total = CHATS as usize * MESSAGES;
    assert_eq!(h.telegram.wait_for_sent_count(total, WAIT).await, total);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for chat in 1..=CHATS {
        let replies = h.telegram.sent_to(chat);
        assert_eq!(
            replies.len(),
            MESSAGES,
            "chat {chat}: one reply per message"
        );
        for (message, reply) in replies.iter().enumerate() {
            let answer = format!("answer to: c{chat} m{message}");
            assert!(
                reply.text == answer || reply.text.contains("can't answer"),
                "chat {chat} reply {message}: {}",
                reply.text
            );
        }
    }
    let status = h.service.tree_status().await.unwrap();
    for line in status.children {
        assert_eq!(line.restarts, PANICS, "{:?}", line.child);
        assert!(line.alive, "{:?}", line.child);
    }
    eprintln!(
        "chaos: {} panics over {chaos_took:?}",
        PANICS as usize * victims.len()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_failures_are_classified() {
    use llmgram::config::Config;
    use llmgram::llm::error::TimeoutPhase;
    use llmgram::llm::{ChatMessage, LlmClient, LlmError, Role};

    let config = Config::from_defaults_with("llm.request_timeout = \"500ms\"\n").unwrap();
    let prompt = [ChatMessage::new(Role::User, "hi")];
    let client =
        |url: &str| LlmClient::new("test", &url.parse().unwrap(), "m", &config.llm, None).unwrap();

    // A plain-HTTP server behind an https:// URL: the TLS handshake fails.
    let plain = FakeLlm::start().await;
    let https = plain.base_url().replace("http://", "https://");
    let error = client(&https).complete(&prompt).await.unwrap_err();
    assert_eq!(error.class(), "tls", "{error}");
    assert!(!error.is_retryable());

    // Nothing listens: connection refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let error = client(&closed).complete(&prompt).await.unwrap_err();
    assert!(matches!(error, LlmError::Connect(_)), "{error}");
    assert!(error.is_retryable());

    // The server accepts and never answers: a read timeout.
    plain.set_responder(|_| LlmReply::now(LlmReplyKind::Hang));
    let error = client(&plain.base_url())
        .complete(&prompt)
        .await
        .unwrap_err();
    assert_eq!(error, LlmError::Timeout(TimeoutPhase::Read));
}

//! Sessions hardened against what arrives from outside: update ids that
//! start over, `/forget` that must not refill the budget, group members
//! who are not admins.

use std::time::Duration;

use llmgram::store::inspect;
use llmgram::telegram::inbound::ChatId;

use crate::common::{Harness, eventually};

const CHAT: i64 = 4_242;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_ids_that_start_over_are_answered_and_redeliveries_are_not() {
    let h = Harness::start().await;
    h.telegram.restart_update_ids(50_000);
    assert_eq!(h.say(CHAT, "before the pause"), 50_000);
    h.replies(CHAT, 1).await;
    // The ingress confirms 50,000 with its next poll.
    let telegram = h.telegram.clone();
    eventually("update 50,000 confirmed", || {
        let telegram = telegram.clone();
        async move { telegram.confirmed_offset() > 50_000 }
    })
    .await;

    // A week later Telegram picks the next id at random, below 50,000.
    h.telegram.restart_update_ids(20_000);
    assert_eq!(h.say(CHAT, "after the pause"), 20_000);
    let replies = h.replies(CHAT, 2).await;
    assert_eq!(replies[1].text, "answer to: after the pause");
    assert_eq!(h.say(CHAT, "/forget"), 20_001);
    h.replies(CHAT, 3).await;

    // Telegram sends 50,000 again: it was answered, so it is not again.
    assert!(h.telegram.redeliver(50_000));
    h.say(CHAT, "and now?");
    let replies = h.replies(CHAT, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let texts: Vec<String> = h
        .telegram
        .sent_to(CHAT)
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts.len(), 4, "nothing answered twice: {texts:?}");
    assert_eq!(replies[3].text, "answer to: and now?");
    assert_eq!(h.llm.request_count(), 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_and_reset_do_not_refill_the_daily_budget() {
    let h = Harness::start_with("llm.daily_token_budget = 10\n").await;
    h.say(CHAT, "first question");
    assert_eq!(
        h.replies(CHAT, 1).await[0].text,
        "answer to: first question"
    );
    let steps = [
        ("/reset", false),
        ("second question", true),
        ("/forget", false),
        ("third question", true),
    ];
    for (n, (text, refused)) in steps.into_iter().enumerate() {
        h.say(CHAT, text);
        let reply = &h.replies(CHAT, n + 2).await[n + 1].text;
        if refused {
            assert!(reply.contains("allowance of 10 tokens"), "{text}: {reply}");
        }
    }
    // The forgotten chat has no record left; what it spent is still known
    // after a restart.
    let h = h.restart("llm.daily_token_budget = 10\n").await;
    h.say(CHAT, "fourth question");
    let reply = &h.replies(CHAT, 6).await[5].text;
    assert!(reply.contains("allowance of 10 tokens"), "{reply}");
    assert_eq!(h.llm.request_count(), 1, "no LLM call over budget");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spend_kept_across_forget_survives_a_backup_and_restore() {
    let h = Harness::start_with("llm.daily_token_budget = 10\n").await;
    h.say(CHAT, "first question");
    h.replies(CHAT, 1).await;
    h.say(CHAT, "/forget");
    h.replies(CHAT, 2).await;
    let ops = h.service.ops_addr().expect("ops listener");
    let backup = tempfile::tempdir().unwrap();
    let target = backup.path().join("copy");
    let response = reqwest::Client::new()
        .post(format!("http://{ops}/backup"))
        .bearer_auth(crate::common::OPS_TOKEN)
        .json(&serde_json::json!({ "to": target }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    h.stop().await;

    let restored = tempfile::tempdir().unwrap();
    llmgram::store::backup::restore(&target, restored.path()).unwrap();
    let h = Harness::start_in(restored, "llm.daily_token_budget = 10\n").await;
    h.telegram.restart_update_ids(1_000);
    h.say(CHAT, "second question");
    let reply = &h.replies(CHAT, 1).await[0].text;
    assert!(reply.contains("allowance of 10 tokens"), "{reply}");
    assert_eq!(h.llm.request_count(), 0, "no LLM call over budget");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_deletes_the_quarantined_copies_of_the_chat_too() {
    const OTHER: i64 = 4_343;
    let h = Harness::start().await;
    h.say(CHAT, "my secret words");
    h.say(OTHER, "other words");
    h.replies(CHAT, 1).await;
    h.replies(OTHER, 1).await;
    let dir = h.stop_keeping_store().await;
    let mine = b"\x01\xff\xff\xff\xff\xffmy secret words".to_vec();
    let theirs = b"\x01\xff\xff\xff\xff\xffother words".to_vec();
    {
        let store = inspect::open(dir.path()).unwrap();
        store.put_raw_chat(ChatId(CHAT), &mine).unwrap();
        store.put_raw_chat(ChatId(OTHER), &theirs).unwrap();
    }

    // New fakes: ids past those the store has seen.
    let h = Harness::start_in(dir, "").await;
    h.telegram.restart_update_ids(1_000);
    h.say(CHAT, "again");
    h.say(OTHER, "again");
    h.replies(CHAT, 1).await;
    h.replies(OTHER, 1).await;
    h.say(CHAT, "/forget");
    h.replies(CHAT, 2).await;
    let dir = h.stop_keeping_store().await;

    let store = inspect::open(dir.path()).unwrap();
    assert_eq!(
        store.failed().unwrap(),
        vec![theirs],
        "only the other chat's quarantined copy is left"
    );
    assert_eq!(store.chat(ChatId(CHAT)).unwrap(), None);
}

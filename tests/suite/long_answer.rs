//! A 10,000-character answer arrives as ordered messages within Telegram's
//! limit, nothing lost.

use llmgram_fakes::LlmReply;

use crate::common::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_answers_are_split_in_order_without_loss() {
    let h = Harness::start().await;
    let answer: String = (0..2000)
        .map(|i| {
            if i % 40 == 39 {
                format!("w{i:04}\n\n")
            } else {
                format!("w{i:04} ")
            }
        })
        .collect::<String>()
        .chars()
        .take(10_000)
        .collect();
    assert_eq!(answer.chars().count(), 10_000);
    let long = answer.clone();
    h.llm.set_responder(move |_| LlmReply::text(long.clone()));

    h.say(30, "write a lot");
    let parts = h.replies(30, 3).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let parts = if h.telegram.sent_to(30).len() > parts.len() {
        h.telegram.sent_to(30)
    } else {
        parts
    };
    assert_eq!(parts.len(), 3, "10,000 characters need exactly 3 messages");
    for part in &parts {
        let units: usize = part.text.encode_utf16().count();
        assert!(units <= 4096, "part of {units} units");
    }
    let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let received: String = parts.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(
        squeeze(&received),
        squeeze(&answer),
        "every character, in order"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markdown_answers_arrive_as_text_with_entities() {
    let h = Harness::start().await;
    h.llm.set_responder(|_| {
        LlmReply::text("Use **bold** and `code`:\n\n```rust\nfn main() {}\n```\n\nSee [docs](https://example.com).")
    });
    h.say(31, "format please");
    let sent = &h.replies(31, 1).await[0];
    assert_eq!(sent.text, "Use bold and code:\n\nfn main() {}\n\nSee docs.");
    assert!(
        sent.body.get("parse_mode").is_none(),
        "entities, never a parse mode"
    );
    let kinds: Vec<&str> = sent.body["entities"]
        .as_array()
        .expect("entities sent")
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["bold", "code", "pre", "text_link"]);
    h.stop().await;
}

//! The fake's `sendMessageDraft` (Bot API 9.5): recorded in private chats,
//! refused in groups as Telegram does, and refused everywhere like an older
//! server when asked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use llmgram_fakes::FakeTelegram;
use serde_json::{Value, json};

async fn draft(fake: &FakeTelegram, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}bot1:x/SendMessageDraft", fake.api_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn drafts_in_private_chats_are_recorded() {
    let fake = FakeTelegram::start().await;
    let (status, answer) = draft(
        &fake,
        json!({"chat_id": 5, "draft_id": 9, "text": "Hel",
               "entities": [{"type": "bold", "offset": 0, "length": 3}]}),
    )
    .await;
    assert_eq!((status, &answer["result"]), (200, &json!(true)));
    draft(
        &fake,
        json!({"chat_id": 5, "message_thread_id": 3, "draft_id": 9, "text": "Hello"}),
    )
    .await;
    let drafts = fake.drafts_to(5);
    assert_eq!(drafts.len(), 2);
    assert_eq!((drafts[0].draft_id, drafts[0].text.as_str()), (9, "Hel"));
    assert_eq!(drafts[0].entities.as_ref().unwrap()[0]["type"], "bold");
    assert_eq!(
        (drafts[1].thread_id, drafts[1].text.as_str()),
        (Some(3), "Hello")
    );
    assert!(fake.sent().is_empty(), "a draft is not a message");
    assert!(fake.edits().is_empty());
}

#[tokio::test]
async fn groups_bad_ids_and_old_servers_are_refused() {
    let fake = FakeTelegram::start().await;
    let (status, answer) = draft(&fake, json!({"chat_id": -100, "draft_id": 1, "text": "x"})).await;
    assert_eq!(status, 400);
    assert_eq!(answer["description"], "Bad Request: TEXTDRAFT_PEER_INVALID");
    let (status, _) = draft(&fake, json!({"chat_id": 5, "draft_id": 0, "text": "x"})).await;
    assert_eq!(status, 400);
    let (status, _) = draft(&fake, json!({"chat_id": 5, "draft_id": 1, "text": " "})).await;
    assert_eq!(status, 400);

    fake.refuse_drafts(true);
    let (status, answer) = draft(&fake, json!({"chat_id": 5, "draft_id": 1, "text": "x"})).await;
    assert_eq!(status, 404);
    assert_eq!(answer["description"], "Not Found: method not found");
    assert_eq!(fake.method_calls("sendMessageDraft"), 4);

    fake.refuse_drafts(false);
    let (status, _) = draft(&fake, json!({"chat_id": 5, "draft_id": 1, "text": "x"})).await;
    assert_eq!(status, 200);
    assert_eq!(fake.drafts().len(), 1);
}

//! Bad input gets a clear reply and never reaches the LLM.

use crate::common::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticker_empty_text_unknown_command_and_oversized_text_get_replies() {
    let h = Harness::start_with("input.max_chars = 50\n").await;
    h.telegram.push_sticker(20, 20);
    h.telegram.push_photo(21, 21);
    h.say(22, "   ");
    h.say(23, "/frobnicate now");
    h.say(24, &"ж".repeat(51));

    assert!(h.replies(20, 1).await[0].text.contains("text"));
    assert!(h.replies(21, 1).await[0].text.contains("text"));
    assert!(h.replies(22, 1).await[0].text.contains("empty"));
    let unknown = &h.replies(23, 1).await[0].text;
    assert!(
        unknown.contains("/frobnicate") && unknown.contains("/help"),
        "{unknown}"
    );
    let too_long = &h.replies(24, 1).await[0].text;
    assert!(
        too_long.contains("51") && too_long.contains("50"),
        "{too_long}"
    );

    assert_eq!(h.llm.request_count(), 0, "no bad input may reach the LLM");

    // The chats still work afterwards, and the rejected text is not history.
    h.say(24, "short");
    h.replies(24, 2).await;
    let request = h.llm.requests().pop().unwrap();
    assert_eq!(request.messages.len(), 2);
    h.stop().await;
}

//! Hardening of what goes in and out: invisible characters never reach the
//! LLM while emoji sequences and the joiners of scripts that need them stay
//! intact; provider answers are bounded in bytes and characters; an edit
//! whose outcome is unclear never becomes a duplicate message.

use std::time::Duration;

use llmgram_fakes::{LlmReply, LlmReplyKind, TelegramFault};

use crate::common::settled_transcript;
use crate::common::{Harness, eventually};

const STREAMING: &str = "llm.stream = true\ntelegram.edit_interval = \"200ms\"\n";

fn stream(chunks: Vec<String>, chunk_delay: Duration) -> LlmReply {
    LlmReply::now(LlmReplyKind::Stream {
        chunks,
        chunk_delay,
        break_after: None,
    })
}

async fn first_text_shown(h: &Harness, chat_id: i64) {
    eventually("the first text", || {
        let shown = !h.telegram.transcript(chat_id).is_empty();
        async move { shown }
    })
    .await;
}

/// What the LLM was asked last, as the user's message.
async fn asked(h: &Harness, chat_id: i64, text: &str) -> String {
    let before = h.llm.request_count();
    h.say(chat_id, text);
    h.llm
        .wait_for_requests(before + 1, crate::common::WAIT)
        .await;
    h.llm.requests()[before].last_user_message().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_of_only_invisible_characters_is_empty_and_costs_no_llm_call() {
    let h = Harness::start().await;
    // Hangul fillers (U+3164, halfwidth U+FFA0, the jamo fillers).
    h.say(401, "\u{3164}\u{FFA0} \u{3164}\u{115F}\u{1160}");
    // Unicode tag characters: "hi" spelled invisibly, with a cancel tag.
    h.say(402, "\u{E0068}\u{E0069}\u{E007F}");
    // Variation selectors, a combining grapheme joiner, Khmer inherent
    // vowels, an invisible separator, with no base to select.
    h.say(
        403,
        "\u{FE0F}\u{FE00}\u{034F}\u{17B4}\u{17B5}\u{2063}\u{E0100}",
    );
    for chat in [401, 402, 403] {
        let reply = &h.replies(chat, 1).await[0].text;
        assert!(reply.contains("empty"), "chat {chat}: {reply}");
    }
    assert_eq!(h.llm.request_count(), 0, "invisible text reached the LLM");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_characters_inside_text_are_removed_before_the_llm() {
    let h = Harness::start().await;
    h.llm.set_responder(|_| LlmReply::text("ok"));
    // Tag characters smuggling an instruction after ordinary text.
    let smuggled = "hello\u{E0069}\u{E0067}\u{E006E}\u{E006F}\u{E0072}\u{E0065} there";
    assert_eq!(asked(&h, 410, smuggled).await, "hello there");
    // Hangul fillers between words, a variation selector run after a letter.
    assert_eq!(
        asked(&h, 410, "a\u{3164}b\u{FFA0}c x\u{FE00}\u{FE01}\u{FE02}").await,
        "abc x\u{FE00}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emoji_sequences_keep_their_joiners_selectors_and_tags() {
    let h = Harness::start().await;
    h.llm.set_responder(|_| LlmReply::text("ok"));
    for text in [
        // family: man ZWJ woman ZWJ girl
        "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
        // woman technologist, medium skin tone
        "\u{1F469}\u{1F3FD}\u{200D}\u{1F4BB}",
        // rainbow flag: white flag VS16 ZWJ rainbow
        "\u{1F3F3}\u{FE0F}\u{200D}\u{1F308}",
        // heart on fire: heart VS16 ZWJ fire
        "\u{2764}\u{FE0F}\u{200D}\u{1F525} yes",
        // keycap one
        "1\u{FE0F}\u{20E3} first",
        // flag of Scotland: black flag, tags g b s c t, cancel tag
        "\u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
        // flag of England
        "go \u{1F3F4}\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}!",
    ] {
        assert_eq!(asked(&h, 420, text).await, text, "{text:?}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_between_letters_of_joining_scripts_are_kept() {
    let h = Harness::start().await;
    h.llm.set_responder(|_| LlmReply::text("ok"));
    for text in [
        // Persian "I want": mi ZWNJ khaham
        "\u{0645}\u{06CC}\u{200C}\u{062E}\u{0648}\u{0627}\u{0647}\u{0645}",
        // Arabic letters with a ZWJ (forced joining form)
        "\u{0647}\u{200D}\u{0640}",
        // Devanagari: ka virama ZWJ ssa (half form), ka virama ZWNJ ssa
        "\u{0915}\u{094D}\u{200D}\u{0937} \u{0915}\u{094D}\u{200C}\u{0937}",
        // Malayalam chillu by ZWJ after virama
        "\u{0D28}\u{0D4D}\u{200D}",
    ] {
        assert_eq!(asked(&h, 430, text).await, text, "{text:?}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_anywhere_else_are_removed() {
    let h = Harness::start().await;
    h.llm.set_responder(|_| LlmReply::text("ok"));
    for (text, clean) in [
        ("pass\u{200D}word", "password"),
        ("ig\u{200C}nore previous", "ignore previous"),
        ("\u{200D}\u{1F468}", "\u{1F468}"),
        ("\u{1F468}\u{200D}", "\u{1F468}"),
        (
            "\u{1F468}\u{200D}\u{200D}\u{1F469}",
            "\u{1F468}\u{200D}\u{1F469}",
        ),
        ("\u{0645}\u{200C} x", "\u{0645} x"),
        // tags not after a black flag, or not ending in a cancel tag
        ("x\u{E0067}\u{E0062}\u{E007F}", "x"),
        ("\u{1F3F4}\u{E0067}\u{E0062}", "\u{1F3F4}"),
    ] {
        assert_eq!(asked(&h, 440, text).await, clean, "{text:?}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_answered_with_garbage_is_taken_as_applied_not_sent_again() {
    let h = Harness::start_with(STREAMING).await;
    let chunks: Vec<String> = (0..12).map(|i| format!("piece{i} ")).collect();
    let full = chunks.concat();
    h.llm
        .script(vec![stream(chunks, Duration::from_millis(100))]);
    h.say(450, "go");
    first_text_shown(&h, 450).await;
    // Every edit from now on is applied, but its answer is unreadable.
    h.telegram.fail_next_sends(50, TelegramFault::Garbled);
    let shown = settled_transcript(&h, 450, 1).await;
    assert_eq!(shown, [full.trim_end()], "one message, complete, no copies");
    assert_eq!(h.telegram.sent_to(450).len(), 1, "no second message");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_refused_as_impossible_still_becomes_a_new_message() {
    let h = Harness::start_with(STREAMING).await;
    h.llm.script(vec![stream(
        vec!["first ".into(), "second".into()],
        Duration::from_millis(400),
    )]);
    h.say(451, "go");
    first_text_shown(&h, 451).await;
    h.telegram.fail_next_sends(
        1,
        TelegramFault::Status(400, "Bad Request: message can't be edited".into()),
    );
    let shown = settled_transcript(&h, 451, 2).await;
    assert_eq!(shown, ["first", "first second"], "the rest still arrives");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_is_rendered_from_its_first_message() {
    let h = Harness::start_with(STREAMING).await;
    h.llm.script(vec![stream(
        vec![
            "**E".into(),
            "xample** and `co".into(),
            "de` and *it".into(),
            "alic* done".into(),
        ],
        Duration::from_millis(400),
    )]);
    h.say(452, "go");
    let shown = settled_transcript(&h, 452, 1).await;
    assert_eq!(shown, ["Example and code and italic done"]);
    let first = &h.telegram.sent_to(452)[0];
    assert_eq!(first.text, "E", "no raw Markdown shown: {:?}", first.text);
    assert_eq!(first.body["entities"][0]["type"], "bold");
    for edit in h.telegram.edits() {
        assert!(
            !edit.text.contains(['*', '`']),
            "an edit showed raw Markdown: {:?}",
            edit.text
        );
    }
    h.stop().await;
}

/// Waits for an answer to settle and returns the chat's messages.
async fn long_reply(h: &Harness, chat_id: i64) -> Vec<String> {
    settled_transcript(h, chat_id, 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_answer_is_cut_at_the_length_limit_with_a_note() {
    let h = Harness::start_with("llm.max_answer_chars = 5000\n").await;
    let word = |i: usize| format!("w{i:05} ");
    let huge: String = (0..15_000).map(word).collect();
    assert!(huge.chars().count() >= 100_000);
    h.llm.set_responder(move |_| LlmReply::text(huge.clone()));
    h.say(460, "write forever");
    let shown = long_reply(&h, 460).await;
    assert!(
        shown.len() <= 2,
        "{} messages for 5,000 characters",
        shown.len()
    );
    let all = shown.concat();
    assert!(all.starts_with("w00000 w00001"), "the beginning is kept");
    assert!(
        all.contains("too long"),
        "the user is told: {:?}",
        shown.last()
    );
    let kept = all.matches('w').count();
    assert!(
        (600..=720).contains(&kept),
        "about 5,000 characters kept: {kept} words"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_stream_is_cut_at_the_length_limit_and_closed() {
    let h = Harness::start_with(&format!("{STREAMING}llm.max_answer_chars = 5000\n")).await;
    let chunks: Vec<String> = (0..200)
        .map(|i| format!("c{i:03} {} ", "x".repeat(494)))
        .collect();
    h.llm.script(vec![stream(chunks, Duration::from_millis(5))]);
    h.say(461, "stream forever");
    let shown = settled_transcript(&h, 461, 2).await;
    assert_eq!(
        shown.len(),
        2,
        "5,000 characters and the note: {}",
        shown.len()
    );
    let all = shown.concat();
    assert!(all.contains("c000") && all.contains("c009"));
    assert!(!all.contains("c010"), "nothing past the limit is shown");
    assert!(all.contains("too long"), "the user is told");
    assert_eq!(h.llm.request_count(), 1, "a cut answer is not asked again");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_past_the_byte_limit_is_refused_or_cut() {
    let h = Harness::start_with("llm.max_response_bytes = 20000\n").await;
    // A plain body past the limit cannot be read half: refused, not retried.
    h.llm.set_responder(|_| LlmReply::text("y".repeat(30_000)));
    h.say(462, "big body");
    let reply = &h.replies(462, 1).await[0].text;
    assert!(!reply.contains("yyy"), "nothing of it is shown");
    assert_eq!(h.llm.request_count(), 1, "not retried: {reply}");
    h.stop().await;

    // A stream past the limit keeps what came within it.
    let h = Harness::start_with(&format!("{STREAMING}llm.max_response_bytes = 20000\n")).await;
    let chunks: Vec<String> = (0..100)
        .map(|i| format!("s{i:03} {} ", "z".repeat(494)))
        .collect();
    h.llm.script(vec![stream(chunks, Duration::from_millis(5))]);
    h.say(463, "big stream");
    let shown = settled_transcript(&h, 463, 1).await;
    let all = shown.concat();
    assert!(all.starts_with("s000"), "{all:.40}");
    assert!(!all.contains("s050"), "reading stopped at the limit");
    assert!(all.contains("too long"), "the user is told");
    h.stop().await;
}

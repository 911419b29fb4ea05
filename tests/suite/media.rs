//! Media: photos to a vision model, voice notes through transcription,
//! documents read as text; every refusal a clear reply with no LLM call.
//! The fake Bot API serves the files (getFile and the download route), the
//! fake LLM records image parts and transcription uploads.

use std::time::Duration;

use llmgram::store::inspect;
use llmgram::telegram::inbound::ChatId;
use llmgram_fakes::{FakeLlm, FakeTelegram, LlmReply, MediaUpdate, TranscriptionReply, jpeg};

use crate::common::process::BotProcess;
use crate::common::{Harness, WAIT};

/// An Ogg voice note's first bytes, padded.
fn ogg(size: usize) -> Vec<u8> {
    let mut bytes = b"OggS\x00\x02".to_vec();
    bytes.resize(size, 7);
    bytes
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_with_a_caption_is_one_request_with_both_parts() {
    let h = Harness::start_with("llm.vision_model = \"see-model\"\n").await;
    let image = jpeg(640, 480, 2_000);
    let small = h.telegram.add_file(jpeg(90, 67, 300), "photos/file_0.jpg");
    let large = h.telegram.add_file(image.clone(), "photos/file_1.jpg");
    h.telegram
        .push_media(MediaUpdate::photo(31, 31, &[&small, &large]).caption("what is this?"));

    let reply = &h.replies(31, 1).await[0];
    assert!(reply.text.starts_with("answer to:"), "{}", reply.text);
    let requests = h.llm.requests();
    assert_eq!(requests.len(), 1, "a captioned photo needs no description");
    let request = &requests[0];
    assert!(request.last_user_message().contains("what is this?"));
    assert_eq!(request.images.len(), 1);
    // The largest size, whole, as a data URL: never the download URL.
    assert_eq!(
        request.images[0],
        format!("data:image/jpeg;base64,{}", base64_of(&image))
    );
    assert!(!request.body.to_string().contains("123456:test"));
    assert_eq!(h.telegram.downloaded_paths(), ["photos/file_1.jpg"]);
    // The vision model, not the text model, got it.
    assert_eq!(request.model, "see-model");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_vision_a_caption_is_answered_alone_and_the_chat_told_once() {
    let h = Harness::start_with("llm.vision_model = \"\"\n").await;
    for (i, caption) in ["first", "second"].into_iter().enumerate() {
        let photo = h.telegram.add_file(jpeg(64, 64, 500), "photos/p.jpg");
        h.telegram
            .push_media(MediaUpdate::photo(32, 32, &[&photo]).caption(caption));
        h.replies(32, i + 1).await;
    }
    let sent = h.replies(32, 2).await;
    assert!(
        sent[0].text.contains("answer to: first"),
        "{}",
        sent[0].text
    );
    assert!(sent[0].text.contains("cannot be seen"), "{}", sent[0].text);
    assert!(!sent[1].text.contains("cannot be seen"), "told once");
    assert!(h.llm.requests().iter().all(|r| r.images.is_empty()));
    assert_eq!(h.telegram.downloads(), 0, "nothing to download");

    // Without a caption there is nothing to answer.
    let photo = h.telegram.add_file(jpeg(64, 64, 500), "photos/q.jpg");
    h.telegram.push_media(MediaUpdate::photo(32, 32, &[&photo]));
    let sent = h.replies(32, 3).await;
    assert!(
        sent[2].text.contains("describe the picture"),
        "{}",
        sent[2].text
    );
    assert_eq!(h.llm.request_count(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_album_of_three_is_one_request_with_three_images() {
    let h = Harness::start().await;
    let ids: Vec<String> = (0..3)
        .map(|i| {
            h.telegram
                .add_file(jpeg(100 + i, 100, 400), &format!("photos/a{i}.jpg"))
        })
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let mut update = MediaUpdate::photo(33, 33, &[id]).album("album-1");
        if i == 0 {
            update = update.caption("which one is best?");
        }
        h.telegram.push_media(update);
    }
    let sent = h.replies(33, 1).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(h.telegram.sent_to(33).len(), 1, "{sent:?}");
    let requests = h.llm.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].images.len(), 3);
    assert!(
        requests[0]
            .last_user_message()
            .contains("which one is best?")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_in_a_caption_applies_to_the_photo() {
    let h = Harness::start().await;
    let photo = h
        .telegram
        .add_file(jpeg(800, 600, 3_000), "photos/beach.jpg");
    h.telegram
        .push_media(MediaUpdate::photo(34, 34, &[&photo]).caption("/caption for my beach post"));
    h.replies(34, 1).await;
    let request = h.llm.requests().pop().unwrap();
    let asked = request.last_user_message();
    assert!(
        asked.contains("Write three short, catchy captions"),
        "{asked}"
    );
    assert!(asked.contains("for my beach post"), "{asked}");
    assert_eq!(request.images.len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_without_a_caption_is_described_for_later_turns() {
    let h = Harness::start().await;
    h.llm.set_responder(|request| {
        if request.messages[0].1.contains("Describe this image") {
            LlmReply::text("A red bicycle leaning on a wall.")
        } else {
            LlmReply::text(format!("answer to: {}", request.last_user_message()))
        }
    });
    let photo = h.telegram.add_file(jpeg(64, 64, 500), "photos/bike.jpg");
    h.telegram.push_media(MediaUpdate::photo(35, 35, &[&photo]));
    h.replies(35, 1).await;
    h.say(35, "what colour was it?");
    h.replies(35, 2).await;
    let last = h.llm.requests().pop().unwrap();
    assert!(last.images.is_empty(), "images are sent once");
    assert!(
        last.messages
            .iter()
            .any(|(role, text)| role == "user" && text.contains("red bicycle")),
        "{:?}",
        last.messages
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_note_is_transcribed_and_the_answer_shows_the_transcript() {
    let h = Harness::start_with("llm.transcription_model = \"hear-model\"\n").await;
    h.llm.set_transcript("what should I post today?");
    let voice = h.telegram.add_file(ogg(4_000), "voice/file_7.oga");
    h.telegram.push_media(MediaUpdate::voice(36, 36, &voice, 3));
    let reply = &h.replies(36, 1).await[0];
    assert!(
        reply.text.contains("what should I post today?"),
        "{}",
        reply.text
    );
    assert!(reply.text.contains("answer to: what should I post today?"));
    let uploads = h.llm.transcription_requests();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].bytes, ogg(4_000));
    assert_eq!(uploads[0].model, "hear-model");
    assert!(
        uploads[0].file_name.ends_with(".ogg"),
        "{}",
        uploads[0].file_name
    );
    assert_eq!(h.llm.request_count(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transcription_is_retried_then_answered() {
    let h = Harness::start().await;
    h.llm
        .script_transcriptions(vec![TranscriptionReply::status(500, None)]);
    let voice = h.telegram.add_file(ogg(2_000), "voice/v.oga");
    h.telegram.push_media(MediaUpdate::voice(37, 37, &voice, 2));
    let reply = &h.replies(37, 1).await[0];
    assert!(
        reply.text.contains("hello from a voice note"),
        "{}",
        reply.text
    );
    assert_eq!(h.llm.transcription_count(), 2);

    // A provider that keeps failing ends in a reply, never silence.
    h.llm.script_transcriptions(
        (0..20)
            .map(|_| TranscriptionReply::status(400, None))
            .collect(),
    );
    let voice = h.telegram.add_file(ogg(2_000), "voice/w.oga");
    h.telegram.push_media(MediaUpdate::voice(37, 37, &voice, 2));
    let sent = h.replies(37, 2).await;
    assert!(sent[1].text.contains("transcribe"), "{}", sent[1].text);
    assert_eq!(h.llm.request_count(), 1, "no answer without a transcript");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_photos_long_recordings_and_unsupported_files_get_replies() {
    let h = Harness::start_with(
        "media.max_image_bytes = 10000\nmedia.max_audio_seconds = 60\nmedia.max_document_bytes = 1000\n",
    )
    .await;
    let photo = h
        .telegram
        .add_file_declaring(jpeg(64, 64, 100), "photos/big.jpg", 50_000);
    h.telegram.push_media(MediaUpdate::photo(38, 38, &[&photo]));
    let voice = h.telegram.add_file(ogg(1_000), "voice/long.oga");
    h.telegram
        .push_media(MediaUpdate::voice(39, 39, &voice, 61));
    let audio = h
        .telegram
        .add_file_declaring(ogg(100), "music/big.mp3", 30_000_000);
    h.telegram
        .push_media(MediaUpdate::audio(40, 40, &audio, 30, "song.mp3"));
    let video = h.telegram.add_file(vec![0; 100], "videos/v.mp4");
    h.telegram.push_media(MediaUpdate::video(41, 41, &video));
    let doc = h.telegram.add_file(vec![0; 100], "documents/a.bin");
    h.telegram.push_media(MediaUpdate::document(
        42,
        42,
        &doc,
        "a.bin",
        "application/octet-stream",
    ));
    let big_doc = h
        .telegram
        .add_file_declaring(b"text".to_vec(), "documents/b.txt", 5_000);
    h.telegram.push_media(MediaUpdate::document(
        43,
        43,
        &big_doc,
        "b.txt",
        "text/plain",
    ));

    assert!(h.replies(38, 1).await[0].text.contains("too large"));
    let long = &h.replies(39, 1).await[0].text;
    assert!(long.contains("61") && long.contains("60"), "{long}");
    assert!(h.replies(40, 1).await[0].text.contains("too large"));
    assert!(h.replies(41, 1).await[0].text.contains("voice messages"));
    assert!(h.replies(42, 1).await[0].text.contains("voice messages"));
    assert!(h.replies(43, 1).await[0].text.contains("too large"));
    assert_eq!(h.llm.request_count(), 0, "no LLM call for refused media");
    assert_eq!(h.llm.transcription_count(), 0);
    // Only the binary document (size allowed) was downloaded to look at.
    assert_eq!(h.telegram.downloaded_paths(), ["documents/a.bin"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_file_and_a_pdf_reach_the_llm_as_text() {
    let h = Harness::start().await;
    let txt = h.telegram.add_file(
        "Shopping list:\n- milk\n- Ёлка 🎄\n".as_bytes().to_vec(),
        "documents/list.txt",
    );
    h.telegram.push_media(
        MediaUpdate::document(44, 44, &txt, "list.txt", "text/plain").caption("summarise"),
    );
    h.replies(44, 1).await;
    let request = h.llm.requests().pop().unwrap();
    let asked = request.last_user_message();
    assert!(
        asked.contains("Ёлка 🎄") && asked.contains("summarise"),
        "{asked}"
    );

    let pdf = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/hello.pdf"
    ))
    .unwrap();
    let pdf = h.telegram.add_file(pdf, "documents/hello.pdf");
    h.telegram.push_media(MediaUpdate::document(
        44,
        44,
        &pdf,
        "hello.pdf",
        "application/pdf",
    ));
    h.replies(44, 2).await;
    let request = h.llm.requests().pop().unwrap();
    assert!(
        request.last_user_message().contains("Hello from a PDF"),
        "{}",
        request.last_user_message()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_document_is_cut_with_a_visible_note() {
    let h = Harness::start_with("media.max_document_chars = 1000\n").await;
    let text = "word ".repeat(1_000);
    let file = h.telegram.add_file(text.into_bytes(), "documents/long.md");
    h.telegram.push_media(MediaUpdate::document(
        45,
        45,
        &file,
        "long.md",
        "text/markdown",
    ));
    let reply = &h.replies(45, 1).await[0];
    assert!(reply.text.contains("1000"), "{}", reply.text);
    let asked = h.llm.requests().pop().unwrap();
    assert!(asked.last_user_message().chars().count() < 1_300);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_download_failure_is_retried_and_a_missing_file_told() {
    let h = Harness::start().await;
    h.telegram.fail_next_downloads(1, 502);
    let photo = h.telegram.add_file(jpeg(64, 64, 500), "photos/r.jpg");
    h.telegram
        .push_media(MediaUpdate::photo(46, 46, &[&photo]).caption("retry me"));
    assert!(h.replies(46, 1).await[0].text.starts_with("answer to:"));
    assert_eq!(h.telegram.downloads(), 2);

    // A file id Telegram does not know: told, no LLM call; the chat goes on.
    h.telegram
        .push_media(MediaUpdate::photo(46, 46, &["AgACunknown"]).caption("gone"));
    let sent = h.replies(46, 2).await;
    assert!(
        sent[1].text.contains("couldn't get this file"),
        "{}",
        sent[1].text
    );
    h.say(46, "still there?");
    h.replies(46, 3).await;
    assert_eq!(h.llm.request_count(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_groups_only_media_addressed_to_the_bot_is_fetched_and_answered() {
    let h = Harness::start().await;
    let ignored = h.telegram.add_file(jpeg(64, 64, 500), "photos/g1.jpg");
    h.telegram.push_media(
        MediaUpdate::photo(-500, 50, &[&ignored])
            .caption("nice")
            .in_group(),
    );
    let mentioned = h.telegram.add_file(jpeg(64, 64, 500), "photos/g2.jpg");
    h.telegram.push_media(
        MediaUpdate::photo(-500, 51, &[&mentioned])
            .caption("@llmgram_test_bot what's this?")
            .in_group(),
    );
    let voice = h.telegram.add_file(ogg(1_000), "voice/g.oga");
    h.telegram.push_media(
        MediaUpdate::voice(-500, 52, &voice, 2)
            .in_group()
            .reply_to_bot(),
    );
    let sent = h.replies(-500, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.telegram.sent_to(-500).len(), 2, "{sent:?}");
    assert_eq!(
        h.telegram.downloaded_paths(),
        ["photos/g2.jpg", "voice/g.oga"],
        "unaddressed media is never downloaded"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_record_of_a_media_turn_holds_references_not_bytes() {
    let h = Harness::start().await;
    let photo = h
        .telegram
        .add_file(jpeg(640, 480, 50_000), "photos/keep.jpg");
    h.telegram
        .push_media(MediaUpdate::photo(47, 47, &[&photo]).caption("remember me"));
    h.replies(47, 1).await;
    let storage = h.stop_keeping_store().await;
    {
        let store = inspect::open(storage.path()).unwrap();
        let raw = store.raw_chat(ChatId(47)).unwrap().unwrap();
        assert!(raw.len() < 2_000, "{} bytes stored", raw.len());
        let record = store.chat(ChatId(47)).unwrap().unwrap();
        let question = &record.history[0];
        assert!(question.content.contains("remember me"));
        assert_eq!(question.files.len(), 1);
        assert_eq!(question.files[0].file_id, photo);
    }
    // /forget deletes it all (a new fake Bot API: ids past the first run's).
    let h = Harness::start_in(storage, "").await;
    h.telegram.restart_update_ids(1_000);
    h.say(47, "/forget");
    h.replies(47, 1).await;
    let storage = h.stop_keeping_store().await;
    let store = inspect::open(storage.path()).unwrap();
    assert!(store.chat(ChatId(47)).unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_note_in_flight_at_sigkill_is_answered_once_after_restart() {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The first transcription never finishes before the kill.
    llm.set_transcription_latency(Duration::from_secs(30));

    let bot = BotProcess::start(&telegram, &llm, &data).await;
    let voice = telegram.add_file(ogg(3_000), "voice/kill.oga");
    telegram.push_media(MediaUpdate::voice(48, 48, &voice, 3));
    assert_eq!(
        llm.wait_for_transcriptions(1, WAIT).await,
        1,
        "{}",
        bot.log()
    );
    let log = bot.log();
    bot.kill9().await;
    assert!(telegram.sent_to(48).is_empty());

    llm.set_transcription_latency(Duration::ZERO);
    let bot = BotProcess::start(&telegram, &llm, &data).await;
    let sent = telegram.wait_for_sent_to(48, 1, WAIT).await;
    assert_eq!(sent.len(), 1, "{}", bot.log());
    assert!(
        sent[0].text.contains("hello from a voice note"),
        "{}",
        sent[0].text
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(telegram.sent_to(48).len(), 1, "answered once");

    // The token is in no LLM request and no log line.
    let log = format!("{log}{}", bot.log());
    bot.kill9().await;
    assert!(!log.contains("123456:test"), "token in the log");
    assert!(
        llm.requests()
            .iter()
            .all(|r| !r.body.to_string().contains("123456:test"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_costs_more_of_the_per_user_llm_limit() {
    let h = Harness::start_with("limits.user_llm_per_minute = 4\nmedia.image_cost = 3\n").await;
    for i in 0..2 {
        let photo = h
            .telegram
            .add_file(jpeg(64, 64, 300), &format!("photos/c{i}.jpg"));
        h.telegram
            .push_media(MediaUpdate::photo(49, 49, &[&photo]).caption("rate me"));
    }
    let sent = h.replies(49, 2).await;
    assert!(sent[0].text.starts_with("answer to:"), "{}", sent[0].text);
    assert!(sent[1].text.contains("too fast"), "{}", sent[1].text);
    // One text still fits what is left of the allowance.
    h.say(49, "and a text?");
    let sent = h.replies(49, 3).await;
    assert!(sent[2].text.starts_with("answer to:"), "{}", sent[2].text);
    assert_eq!(h.llm.request_count(), 2);
    h.stop().await;
}

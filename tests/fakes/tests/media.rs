//! Proves the media parts of the fakes against the real clients: getFile,
//! downloads and [`MediaUpdate`] messages with teloxide (and raw reqwest),
//! image parts and transcriptions of [`FakeLlm`] with reqwest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use llmgram_fakes::{
    BOT_USER_ID, DEFAULT_TRANSCRIPT, FakeLlm, FakeTelegram, MAX_DOWNLOAD_SIZE, MediaUpdate,
    TelegramFault, TranscriptionReply, jpeg,
};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use teloxide::net::Download;
use teloxide::prelude::*;
use teloxide::types::{FileId, MessageEntityKind, Update, UpdateKind};
use teloxide::{ApiError, RequestError};

const TOKEN: &str = "123:abc";

fn bot(fake: &FakeTelegram) -> Bot {
    Bot::new(TOKEN).set_api_url(fake.api_url().parse().unwrap())
}

fn message(update: &Update) -> &Message {
    match &update.kind {
        UpdateKind::Message(m) => m,
        other => panic!("not a message update: {other:?}"),
    }
}

/// Raw getUpdates result (no confirmation), to check fields teloxide hides.
async fn raw_updates(fake: &FakeTelegram) -> Vec<Value> {
    let r: Value = reqwest::get(format!("{}bot{TOKEN}/getUpdates", fake.api_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["result"].as_array().unwrap().clone()
}

// ------------------------------------------------------------------ telegram

#[tokio::test]
async fn get_file_and_download_round_trip() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    let photo = fake.add_file(b"\xff\xd8 fake jpeg".to_vec(), "photos/file_1.jpg");
    let notes = fake.add_file(b"some notes".to_vec(), "documents/notes.txt");
    assert_ne!(photo, notes);

    let file = bot.get_file(FileId(photo.clone())).await.unwrap();
    assert_eq!(file.meta.id.0, photo);
    assert_eq!(file.meta.size, 12);
    assert_eq!(file.path, "photos/file_1.jpg");
    let mut bytes = Vec::new();
    bot.download_file(&file.path, &mut bytes).await.unwrap();
    assert_eq!(bytes, b"\xff\xd8 fake jpeg");

    let file = bot.get_file(FileId(notes.clone())).await.unwrap();
    assert_ne!(file.meta.unique_id.0, "");
    let mut bytes = Vec::new();
    bot.download_file(&file.path, &mut bytes).await.unwrap();
    assert_eq!(bytes, b"some notes");

    // Raw HTTP: form-encoded getFile, and the download's content type.
    let http = reqwest::Client::new();
    let r: Value = http
        .post(format!("{}bot{TOKEN}/getFile", fake.api_url()))
        .form(&[("file_id", notes.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["ok"], true);
    assert_eq!(r["result"]["file_id"], notes.as_str());
    assert_eq!(r["result"]["file_size"], 10);
    assert_eq!(r["result"]["file_path"], "documents/notes.txt");
    assert!(r["result"]["file_unique_id"].is_string());
    let resp = http
        .get(format!(
            "{}file/bot{TOKEN}/documents/notes.txt",
            fake.api_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/octet-stream"
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"some notes");

    assert_eq!(fake.get_file_calls(), 3);
    assert_eq!(fake.method_calls("getFile"), 3);
    assert_eq!(fake.downloads(), 3);
    assert_eq!(
        fake.downloaded_paths(),
        [
            "photos/file_1.jpg",
            "documents/notes.txt",
            "documents/notes.txt"
        ]
    );
    assert_eq!(fake.wait_for_downloads(3, Duration::ZERO).await, 3);
}

#[tokio::test]
async fn unknown_and_oversize_files_are_refused() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    match bot.get_file(FileId("no-such-file".to_owned())).await {
        Err(RequestError::Api(ApiError::Unknown(d))) => {
            assert_eq!(d, "Bad Request: invalid file_id")
        }
        other => panic!("unexpected {other:?}"),
    }
    let resp = reqwest::Client::new()
        .post(format!("{}bot{TOKEN}/getFile", fake.api_url()))
        .json(&json!({"file_id": "no-such-file"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(
        r,
        json!({"ok": false, "error_code": 400, "description": "Bad Request: invalid file_id"})
    );

    // The declared size is what getFile reports, up to Telegram's 20 MB.
    let at_limit = fake.add_file_declaring(vec![1, 2, 3], "voice/file_2.oga", MAX_DOWNLOAD_SIZE);
    let file = bot.get_file(FileId(at_limit)).await.unwrap();
    assert_eq!(u64::from(file.meta.size), MAX_DOWNLOAD_SIZE);
    let mut bytes = Vec::new();
    bot.download_file(&file.path, &mut bytes).await.unwrap();
    assert_eq!(bytes, [1, 2, 3]);

    let too_big = fake.add_file_declaring(vec![0], "videos/big.mp4", MAX_DOWNLOAD_SIZE + 1);
    let resp = reqwest::Client::new()
        .post(format!("{}bot{TOKEN}/getFile", fake.api_url()))
        .json(&json!({"file_id": too_big}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["description"], "Bad Request: file is too big");
    assert!(bot.get_file(FileId(too_big)).await.is_err());
    assert_eq!(fake.get_file_calls(), 5);
}

#[tokio::test]
async fn downloads_need_the_bots_token_and_a_known_path() {
    let fake = FakeTelegram::start().await;
    fake.add_file(b"abc".to_vec(), "photos/a.jpg");
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    let base = fake.api_url();
    // No API call made with this token yet: unknown to the fake.
    assert_eq!(
        get(format!("{base}file/bot{TOKEN}/photos/a.jpg")).await,
        404
    );
    bot(&fake).get_me().await.unwrap();
    assert_eq!(
        get(format!("{base}file/bot{TOKEN}/photos/a.jpg")).await,
        200
    );
    assert_eq!(
        get(format!("{base}file/bot999:other/photos/a.jpg")).await,
        404
    );
    assert_eq!(get(format!("{base}file/{TOKEN}/photos/a.jpg")).await, 404);
    assert_eq!(
        get(format!("{base}file/bot{TOKEN}/photos/b.jpg")).await,
        404
    );
    assert_eq!(fake.downloads(), 5);
    assert_eq!(fake.downloaded_paths(), ["photos/a.jpg"]);
}

#[tokio::test]
async fn injected_file_faults() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    let id = fake.add_file(b"ogg".to_vec(), "voice/file_3.oga");

    fake.fail_next_get_files(1, TelegramFault::RetryAfter(3));
    // (Not a 5xx here: teloxide sleeps 10 s after a server error.)
    fake.fail_next_get_files(
        1,
        TelegramFault::Status(400, "Bad Request: wrong file id".into()),
    );
    fake.fail_next_get_files(1, TelegramFault::Garbled);
    match bot.get_file(FileId(id.clone())).await {
        Err(RequestError::RetryAfter(secs)) => assert_eq!(secs.seconds(), 3),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        bot.get_file(FileId(id.clone())).await,
        Err(RequestError::Api(ApiError::WrongFileId))
    ));
    assert!(matches!(
        bot.get_file(FileId(id.clone())).await,
        Err(RequestError::InvalidJson { .. })
    ));
    let file = bot.get_file(FileId(id)).await.unwrap();
    assert_eq!(fake.get_file_calls(), 4);

    fake.fail_next_downloads(2, 502);
    fake.fail_next_downloads(1, 500);
    let url = format!("{}file/bot{TOKEN}/{}", fake.api_url(), file.path);
    for expected in [502, 502, 500, 200] {
        let resp = reqwest::get(&url).await.unwrap();
        assert_eq!(resp.status().as_u16(), expected);
    }
    let mut bytes = Vec::new();
    bot.download_file(&file.path, &mut bytes).await.unwrap();
    assert_eq!(bytes, b"ogg");
    assert_eq!(fake.downloads(), 5);
    assert_eq!(fake.downloaded_paths().len(), 2);
}

#[tokio::test]
async fn media_updates_parse() {
    let fake = FakeTelegram::start().await;
    let small = fake.add_file(vec![0; 100], "photos/small.jpg");
    let large = fake.add_file_declaring(vec![0; 10], "photos/large.jpg", 250_000);
    let voice = fake.add_file(vec![1; 50], "voice/v.oga");
    let audio = fake.add_file(vec![2; 60], "music/song.mp3");
    let note = fake.add_file(vec![3; 70], "video_notes/n.mp4");
    let doc = fake.add_file(b"text".to_vec(), "documents/notes.txt");
    let video = fake.add_file(vec![4; 80], "videos/v.mp4");

    let ids = [
        fake.push_media(MediaUpdate::photo(42, 4200, &[&small, &large]).caption("what is this?")),
        fake.push_media(MediaUpdate::voice(42, 4200, &voice, 7)),
        fake.push_media(MediaUpdate::audio(42, 4200, &audio, 180, "song.mp3")),
        fake.push_media(MediaUpdate::video_note(42, 4200, &note, 12)),
        fake.push_media(
            MediaUpdate::document(42, 4200, &doc, "notes.txt", "text/plain")
                .caption("/summarize this please"),
        ),
        fake.push_media(MediaUpdate::video(42, 4200, &video)),
        fake.push_media(
            MediaUpdate::photo(-100, 4300, &[&small])
                .album("album-1")
                .in_group()
                .reply_to_bot(),
        ),
        fake.push_media(MediaUpdate::photo(42, 4200, &["not-registered"])),
    ];
    assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7, 8]);

    let raw = raw_updates(&fake).await;
    let updates = bot(&fake).get_updates().await.unwrap();
    assert_eq!(updates.len(), 8);
    for m in updates.iter().map(message) {
        let from = m.from.as_ref().unwrap();
        assert!(!from.is_bot);
        assert_eq!(from.language_code.as_deref(), Some("en"));
    }

    let m = message(&updates[0]);
    assert_eq!(m.chat.id, ChatId(42));
    assert!(m.chat.is_private());
    let photo = m.photo().unwrap();
    assert_eq!(photo.len(), 2);
    assert_eq!(photo[0].file.id.0, small);
    assert_eq!(photo[0].file.size, 100);
    assert_eq!(photo[1].file.id.0, large);
    assert_eq!(photo[1].file.size, 250_000);
    assert!(photo[0].width < photo[1].width && photo[0].height < photo[1].height);
    assert_ne!(photo[0].file.unique_id, photo[1].file.unique_id);
    assert_eq!(m.caption(), Some("what is this?"));
    assert!(m.caption_entities().is_none_or(<[_]>::is_empty));
    assert!(m.media_group_id().is_none() && m.reply_to_message().is_none());

    let m = message(&updates[1]);
    let v = m.voice().unwrap();
    assert_eq!(v.file.id.0, voice);
    assert_eq!(v.file.size, 50);
    assert_eq!(v.duration.seconds(), 7);
    assert_eq!(v.mime_type.as_ref().unwrap().essence_str(), "audio/ogg");

    let m = message(&updates[2]);
    let a = m.audio().unwrap();
    assert_eq!(a.file.id.0, audio);
    assert_eq!(a.duration.seconds(), 180);
    assert_eq!(a.file_name.as_deref(), Some("song.mp3"));
    assert_eq!(a.mime_type.as_ref().unwrap().essence_str(), "audio/mpeg");

    let m = message(&updates[3]);
    let n = m.video_note().unwrap();
    assert_eq!(n.file.id.0, note);
    assert_eq!(n.duration.seconds(), 12);
    assert_eq!(n.length, 240);

    let m = message(&updates[4]);
    let d = m.document().unwrap();
    assert_eq!(d.file.id.0, doc);
    assert_eq!(d.file.size, 4);
    assert_eq!(d.file_name.as_deref(), Some("notes.txt"));
    assert_eq!(d.mime_type.as_ref().unwrap().essence_str(), "text/plain");
    assert_eq!(m.caption(), Some("/summarize this please"));
    let entities = m.parse_caption_entities().unwrap();
    assert_eq!(entities.len(), 1);
    assert_eq!(*entities[0].kind(), MessageEntityKind::BotCommand);
    assert_eq!(entities[0].text(), "/summarize");

    let m = message(&updates[5]);
    let v = m.video().unwrap();
    assert_eq!(v.file.id.0, video);
    assert!(v.width > 0 && v.height > 0);

    let m = message(&updates[6]);
    assert_eq!(m.chat.id, ChatId(-100));
    assert!(m.chat.is_group());
    assert_eq!(m.chat.title(), Some("Test group"));
    assert_eq!(m.media_group_id().map(|g| g.0.as_str()), Some("album-1"));
    let replied = m.reply_to_message().unwrap();
    assert_eq!(replied.from.as_ref().unwrap().id.0, BOT_USER_ID as u64);
    assert_eq!(replied.chat.id, ChatId(-100));
    assert!(replied.id.0 < m.id.0);

    let m = message(&updates[7]);
    assert_eq!(m.photo().unwrap()[0].file.id.0, "not-registered");

    // Field names as the Bot API spells them.
    let photo = &raw[0]["message"]["photo"];
    assert_eq!(photo[0]["file_size"], 100);
    assert!(photo[0]["file_unique_id"].is_string());
    assert_eq!(raw[3]["message"]["video_note"]["length"], 240);
    assert_eq!(raw[5]["message"]["video"]["duration"], 5);
    assert_eq!(raw[6]["message"]["chat"]["type"], "group");
    assert_eq!(raw[6]["message"]["media_group_id"], "album-1");
    assert!(raw[7]["message"]["photo"][0].get("file_size").is_none());
}

#[tokio::test]
async fn reply_to_bot_quotes_the_last_answer() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    let sent = bot.send_message(ChatId(42), "an answer").await.unwrap();
    let id = fake.add_file(vec![9; 9], "voice/r.oga");
    fake.push_media(MediaUpdate::voice(42, 4200, &id, 3).reply_to_bot());
    let updates = bot.get_updates().await.unwrap();
    let replied = message(&updates[0]).reply_to_message().unwrap();
    assert_eq!(replied.id, sent.id);
    assert_eq!(replied.text(), Some("an answer"));
    assert!(replied.from.as_ref().unwrap().is_bot);
    assert!(message(&updates[0]).id.0 > sent.id.0);
}

#[tokio::test]
async fn media_update_for_a_webhook_is_not_queued() {
    let fake = FakeTelegram::start().await;
    let id = fake.add_file(vec![1], "photos/w.jpg");
    let (update_id, update) = fake.media_update(MediaUpdate::photo(5, 50, &[&id]));
    assert_eq!(update_id, 1);
    let parsed: Update = serde_json::from_str(&update.to_string()).unwrap();
    assert_eq!(message(&parsed).photo().unwrap()[0].file.id.0, id);
    assert!(raw_updates(&fake).await.is_empty());
    assert_eq!(fake.push_text(5, 50, "next"), 2);
}

// ----------------------------------------------------------------------- llm

#[tokio::test]
async fn image_parts_are_recorded() {
    let llm = FakeLlm::start().await;
    let http = reqwest::Client::new();
    let body = json!({
        "model": "vision",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is "},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
                {"type": "text", "text": "this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/b.png", "detail": "low"}},
            ]},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,BBBB"}},
            ]},
        ],
    });
    let resp = http
        .post(format!("{}/chat/completions", llm.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let request = &llm.requests()[0];
    assert_eq!(
        request.images,
        [
            "data:image/jpeg;base64,AAAA",
            "https://example.com/b.png",
            "data:image/png;base64,BBBB"
        ]
    );
    assert_eq!(request.image_count(), 3);
    assert_eq!(request.messages[1].1, "what is this?");
    assert_eq!(request.messages[2].1, "");

    http.post(format!("{}/chat/completions", llm.base_url()))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "plain"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(llm.requests()[1].image_count(), 0);
}

#[tokio::test]
async fn lean_records_keep_no_body_nor_image_data() {
    let llm = FakeLlm::start().await;
    llm.set_lean_records(true);
    let image = format!("data:image/jpeg;base64,{}", "A".repeat(10_000));
    let body = json!({
        "model": "vision",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "c1-m1"},
            {"type": "image_url", "image_url": {"url": image}},
        ]}],
    });
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/chat/completions", llm.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "answer to: c1-m1"
    );
    let request = &llm.requests()[0];
    assert_eq!(request.body, Value::Null);
    assert_eq!(request.images, ["data:image/jpeg;base64,"]);
    assert_eq!(request.last_user_message(), "c1-m1");
    assert_eq!(request.model, "vision");
}

#[test]
fn jpeg_carries_its_dimensions_and_is_padded() {
    let bytes = jpeg(1280, 960, 200_000);
    assert_eq!(bytes.len(), 200_000);
    assert_eq!(bytes[..4], [0xFF, 0xD8, 0xFF, 0xE0]);
    let frame = bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a start-of-frame marker");
    assert_eq!(bytes[frame + 5..frame + 7], 960_u16.to_be_bytes());
    assert_eq!(bytes[frame + 7..frame + 9], 1280_u16.to_be_bytes());
    assert_eq!(jpeg(1, 1, 0).len(), 41, "never cut below the headers");
}

fn audio_form(bytes: &[u8], extra: &[(&str, &str)]) -> Form {
    let file = Part::bytes(bytes.to_vec())
        .file_name("voice.ogg")
        .mime_str("audio/ogg")
        .unwrap();
    let mut form = Form::new().part("file", file).text("model", "whisper-1");
    for (k, v) in extra {
        form = form.text(k.to_string(), v.to_string());
    }
    form
}

async fn transcribe(llm: &FakeLlm, form: Form) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/audio/transcriptions", llm.base_url()))
        .bearer_auth("sk-audio")
        .multipart(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn transcriptions_are_recorded_and_answered() {
    let llm = FakeLlm::start().await;
    let resp = transcribe(&llm, audio_form(b"OggS voice", &[])).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r, json!({"text": DEFAULT_TRANSCRIPT}));

    llm.set_transcript("bonjour");
    let form = audio_form(
        b"OggS 2",
        &[
            ("language", "fr"),
            ("response_format", "text"),
            ("temperature", "0"),
            ("prompt", "a voice note"),
        ],
    );
    let resp = transcribe(&llm, form).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "bonjour");

    let resp = transcribe(
        &llm,
        audio_form(b"x", &[("response_format", "verbose_json")]),
    )
    .await;
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["text"], "bonjour");

    assert_eq!(llm.transcription_count(), 3);
    assert_eq!(llm.request_count(), 0, "chat requests are counted apart");
    let requests = llm.transcription_requests();
    let first = &requests[0];
    assert_eq!(first.model, "whisper-1");
    assert_eq!(first.file_name, "voice.ogg");
    assert_eq!(first.content_type.as_deref(), Some("audio/ogg"));
    assert_eq!(first.bytes, b"OggS voice");
    assert_eq!(first.response_format, None);
    assert_eq!(first.language, None);
    assert_eq!(first.authorization.as_deref(), Some("Bearer sk-audio"));
    assert_eq!(requests[1].language.as_deref(), Some("fr"));
    assert_eq!(requests[1].response_format.as_deref(), Some("text"));
    assert!(requests[1].at >= first.at);
}

#[tokio::test]
async fn transcription_faults_are_scripted() {
    let llm = FakeLlm::start().await;
    llm.script_transcriptions(vec![
        TranscriptionReply::status(500, None),
        TranscriptionReply::status(429, Some(2)),
        TranscriptionReply::Garbage,
        TranscriptionReply::Status {
            code: 503,
            retry_after: None,
            body: "upstream busy".into(),
        },
        TranscriptionReply::text("scripted").after(Duration::from_millis(150)),
        TranscriptionReply::Hang,
    ]);

    let resp = transcribe(&llm, audio_form(b"a", &[])).await;
    assert_eq!(resp.status(), 500);
    let r: Value = resp.json().await.unwrap();
    assert!(r["error"]["message"].is_string());

    let resp = transcribe(&llm, audio_form(b"a", &[])).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");

    let resp = transcribe(&llm, audio_form(b"a", &[])).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.json::<Value>().await.is_err());

    let resp = transcribe(&llm, audio_form(b"a", &[])).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.text().await.unwrap(), "upstream busy");

    let started = std::time::Instant::now();
    let resp = transcribe(&llm, audio_form(b"a", &[])).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(resp.json::<Value>().await.unwrap()["text"], "scripted");

    let hung = reqwest::Client::new()
        .post(format!("{}/audio/transcriptions", llm.base_url()))
        .timeout(Duration::from_millis(200))
        .multipart(audio_form(b"a", &[]))
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());

    // Script used up: the default, after its latency.
    llm.set_transcription_latency(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let resp = transcribe(&llm, audio_form(b"a", &[])).await;
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(
        resp.json::<Value>().await.unwrap()["text"],
        DEFAULT_TRANSCRIPT
    );
    assert_eq!(
        llm.wait_for_transcriptions(7, Duration::from_secs(1)).await,
        7
    );
}

#[tokio::test]
async fn malformed_transcription_requests_get_400() {
    let llm = FakeLlm::start().await;
    let url = format!("{}/audio/transcriptions", llm.base_url());
    let http = reqwest::Client::new();

    let no_file = Form::new().text("model", "whisper-1");
    let empty_file = audio_form(b"", &[]);
    let no_model = Form::new().part("file", Part::bytes(b"abc".to_vec()).file_name("a.ogg"));
    for form in [no_file, empty_file, no_model] {
        let resp = http.post(&url).multipart(form).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        let r: Value = resp.json().await.unwrap();
        assert!(r["error"]["message"].is_string(), "{r}");
    }
    let resp = http
        .post(&url)
        .json(&json!({"model": "whisper-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let r: Value = resp.json().await.unwrap();
    assert!(r["error"]["message"].is_string());

    assert_eq!(llm.transcription_count(), 0);
    assert_eq!(
        llm.wait_for_transcriptions(1, Duration::from_millis(50))
            .await,
        0
    );
}

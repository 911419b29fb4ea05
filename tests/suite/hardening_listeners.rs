//! The HTTP listeners (webhook and ops) against hostile clients: forged
//! webhook requests cannot spend the authentic budget, and slow, half-sent
//! or excess connections are closed instead of holding file descriptors.

use std::net::SocketAddr;
use std::time::Duration;

use llmgram_fakes::{FakeLlm, FakeTelegram};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::free_port;
use crate::common::process::BotProcess;
use crate::common::{Harness, WAIT, eventually};

const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";

fn webhook_config(port: u16, extra: &str) -> String {
    format!(
        "telegram.mode = \"webhook\"\n\
         webhook.listen = \"127.0.0.1:{port}\"\n\
         webhook.url = \"http://127.0.0.1:{port}/tg-hook\"\n\
         webhook.max_body_bytes = 20000\n\
         {extra}"
    )
}

/// Connects to `addr` and sends `text`, the start of a request that is
/// never finished.
async fn half_sent(addr: SocketAddr, text: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    stream.write_all(text.as_bytes()).await.expect("sends");
    stream
}

/// Whether the server closes `stream` within `within` (whatever it answers
/// first, e.g. a 408).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_webhook_requests_get_401_and_leave_telegram_its_budget() {
    let port = free_port();
    let h = Harness::start_with(&webhook_config(
        port,
        "webhook.per_ip_per_second = 5\n\
         webhook.unauthenticated_per_ip_per_second = 5\n",
    ))
    .await;
    let registered = h.telegram.webhook().expect("setWebhook was called");
    let secret = registered.secret.expect("a secret token is registered");
    let client = reqwest::Client::new();
    let post = |body: serde_json::Value, secret: Option<&str>| {
        let mut request = client.post(&registered.url).json(&body);
        if let Some(secret) = secret {
            request = request.header(SECRET_HEADER, secret);
        }
        request.send()
    };

    // A forged request is refused for its secret before anything else is
    // looked at, even its (too large) body.
    let (_, huge) = h.telegram.text_update(9, 9, &"x".repeat(30_000));
    assert_eq!(post(huge, Some("wrong")).await.unwrap().status(), 401);

    // Far more forgeries than the per-address allowance, all from the
    // address Telegram's requests come from (as behind a proxy).
    let mut statuses = Vec::new();
    for n in 0..50 {
        let (_, forged) = h.telegram.text_update(2, 2, &format!("forged {n}"));
        let secret = (n % 2 == 0).then_some("wrong");
        statuses.push(post(forged, secret).await.unwrap().status().as_u16());
    }
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.contains(&401), "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "forgeries have a budget of their own: {statuses:?}"
    );

    // Telegram's deliveries still get their whole allowance.
    for chat in [1, 3, 4] {
        let (_, update) = h.telegram.text_update(chat, chat as u64, "authentic");
        assert_eq!(post(update, Some(&secret)).await.unwrap().status(), 200);
        assert_eq!(h.replies(chat, 1).await[0].text, "answer to: authentic");
    }
    assert!(h.telegram.sent_to(2).is_empty() && h.telegram.sent_to(9).is_empty());
    assert_eq!(h.llm.request_count(), 3, "forgeries are never processed");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_listener_closes_slow_and_excess_connections() {
    let port = free_port();
    let h = Harness::start_with(&webhook_config(
        port,
        "webhook.max_connections = 4\n\
         webhook.header_timeout = \"3s\"\n\
         webhook.request_timeout = \"3s\"\n",
    ))
    .await;
    let registered = h.telegram.webhook().expect("setWebhook was called");
    let secret = registered.secret.expect("a secret token is registered");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Four connections take every slot: three never finish their headers,
    // one sends its headers and a tenth of its body.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            half_sent(
                addr,
                "POST /tg-hook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le",
            )
            .await,
        );
    }
    held.push(
        half_sent(
            addr,
            &format!(
                "POST /tg-hook HTTP/1.1\r\nHost: 127.0.0.1\r\n{SECRET_HEADER}: {secret}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"update_id\""
            ),
        )
        .await,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Past the cap, connections are closed as soon as they are accepted.
    for _ in 0..6 {
        let mut excess = half_sent(addr, "POST /tg-hook HTTP/1.1\r\n").await;
        assert!(
            closed_within(&mut excess, Duration::from_secs(1)).await,
            "a connection past webhook.max_connections stays open"
        );
    }

    // The slow ones are closed once their time is up...
    for (n, stream) in held.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(10)).await,
            "slow connection {n} stays open"
        );
    }

    // ...and Telegram's next delivery is taken.
    let (_, update) = h.telegram.text_update(1, 1, "after the slow ones");
    let status = reqwest::Client::new()
        .post(&registered.url)
        .header(SECRET_HEADER, &secret)
        .json(&update)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    assert_eq!(
        h.replies(1, 1).await[0].text,
        "answer to: after the slow ones"
    );
    h.stop().await;
}

/// The real binary with few file descriptors: hundreds of half-sent
/// requests to the ops listener used to take them all (`os error 24`), and
/// the bot answered nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_ops_requests_cannot_starve_a_bot_with_few_file_descriptors() {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let ops: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let polls_before = telegram.get_updates_calls();
    let bot = BotProcess::spawn_with_nofile(
        &telegram,
        &llm,
        &data,
        &[
            ("LLMGRAM_OPS__LISTEN", ops.to_string()),
            ("LLMGRAM_OPS__MAX_CONNECTIONS", "16".into()),
            ("LLMGRAM_OPS__HEADER_TIMEOUT", "2s".into()),
        ],
        NOFILE,
    );
    eventually("the bot to poll", || async {
        telegram.get_updates_calls() > polls_before
    })
    .await;

    // A listener that stops accepting (out of descriptors) soon fills its
    // backlog; the flood ends there.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(ops));
        let Ok(Ok(mut stream)) = connect.await else {
            break;
        };
        let _ = stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await;
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    telegram.push_text(1, 1, "still there?");
    let sent = telegram.wait_for_sent_to(1, 1, WAIT).await;
    assert_eq!(
        sent.first().map(|m| m.text.as_str()),
        Some("answer to: still there?"),
        "log:\n{}",
        bot.log()
    );

    // Once the half-sent requests have been closed, probes get through.
    eventually("the ops listener to answer", || async {
        reqwest::get(format!("http://{ops}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    drop(slow);
    let log = bot.log();
    assert_eq!(bot.terminate().await, Some(0), "log:\n{log}");
}

/// File descriptors the bot gets in the test above: what it needs to run
/// (store, runtime, connections to the fakes) and some room, far fewer than
/// the half-sent requests.
const NOFILE: u32 = 128;

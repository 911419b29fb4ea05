//! The shipped HAProxy rules (`deploy/haproxy.cfg`, run by [`TempHaproxy`])
//! in front of loopback backends that record which updates reach them: a
//! chat's updates of every kind go to one backend, chats spread over all,
//! an unready backend's chats move to the others and come back, an update
//! without a chat still goes somewhere, a post to a dead backend is sent to
//! another, and the whole shipped file passes `haproxy -c`.
//!
//! Each test skips, saying so, when no `haproxy` binary is installed
//! (`.ci/run` installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use llmgram_fakes::{TempHaproxy, haproxy};
use serde_json::{Value, json};

/// A stand-in for one llmgram instance: a webhook listener recording the
/// update ids posted to it, and an ops listener whose `/readyz` answers
/// 200 or 503 as the test says.
struct Backend {
    webhook: SocketAddr,
    ops: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    ready: AtomicBool,
    /// The `update_id` of each JSON body received (-1 for other bodies).
    received: Mutex<Vec<i64>>,
    checks: AtomicI64,
}

impl Backend {
    async fn start() -> Backend {
        let shared = Arc::new(Shared::default());
        shared.ready.store(true, Ordering::SeqCst);
        let webhook = Router::new()
            .fallback(record)
            .with_state(Arc::clone(&shared));
        let ops = Router::new()
            .route("/readyz", get(readyz))
            .with_state(Arc::clone(&shared));
        Backend {
            webhook: serve(webhook).await,
            ops: serve(ops).await,
            shared,
        }
    }

    fn set_ready(&self, ready: bool) {
        self.shared.ready.store(ready, Ordering::SeqCst);
    }

    fn received(&self) -> Vec<i64> {
        self.shared.received.lock().unwrap().clone()
    }

    fn pair(&self) -> (SocketAddr, SocketAddr) {
        (self.webhook, self.ops)
    }
}

async fn record(State(shared): State<Arc<Shared>>, body: String) -> &'static str {
    let id = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["update_id"].as_i64())
        .unwrap_or(-1);
    shared.received.lock().unwrap().push(id);
    "{}"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.checks.fetch_add(1, Ordering::SeqCst);
    if shared.ready.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// Three backends and haproxy in front of them, or `None` (the test skips)
/// without a haproxy binary.
async fn setup(n: usize) -> Option<(Vec<Backend>, TempHaproxy)> {
    if !haproxy::available() {
        eprintln!("skipped: no haproxy binary (apt-get install haproxy)");
        return None;
    }
    let mut backends = Vec::new();
    for _ in 0..n {
        backends.push(Backend::start().await);
    }
    let pairs: Vec<_> = backends.iter().map(Backend::pair).collect();
    let proxy = tokio::task::spawn_blocking(move || TempHaproxy::start(&pairs))
        .await
        .unwrap()
        .unwrap();
    // Every backend passed a health check before the test routes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backends
        .iter()
        .any(|b| b.shared.checks.load(Ordering::SeqCst) == 0)
    {
        assert!(Instant::now() < deadline, "no health checks");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some((backends, proxy))
}

/// Posts updates through haproxy, as Telegram does.
struct Poster {
    client: reqwest::Client,
    url: String,
    next_id: i64,
}

impl Poster {
    fn new(proxy: &TempHaproxy) -> Poster {
        Poster {
            client: reqwest::Client::new(),
            url: format!("http://{}/webhook", proxy.addr()),
            next_id: 1,
        }
    }

    /// Posts `kind: payload` as a fresh update; returns its id.
    async fn post(&mut self, kind: &str, payload: Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut update = json!({ "update_id": id });
        update[kind] = payload;
        let status = self.post_raw(update.to_string()).await;
        assert_eq!(status, 200, "update {update}");
        id
    }

    async fn post_raw(&self, body: String) -> u16 {
        self.client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-telegram-bot-api-secret-token", "s3cret")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn message(&mut self, kind: &str, chat: i64) -> i64 {
        self.post(kind, message(chat)).await
    }

    async fn press(&mut self, chat: i64) -> i64 {
        self.post(
            "callback_query",
            json!({
                "id": "q1",
                "from": user(chat),
                "chat_instance": "ci",
                "data": "again",
                "message": message(chat),
            }),
        )
        .await
    }
}

fn user(id: i64) -> Value {
    json!({ "id": id.abs(), "is_bot": false, "first_name": "U" })
}

fn message(chat: i64) -> Value {
    let kind = if chat < 0 { "supergroup" } else { "private" };
    json!({
        "message_id": 7,
        "date": 1_764_650_000,
        "from": user(chat),
        "chat": { "id": chat, "type": kind, "title": "T", "first_name": "U" },
        "text": "hello",
    })
}

/// Which backend received each update id.
fn landing(backends: &[Backend]) -> BTreeMap<i64, usize> {
    let mut at = BTreeMap::new();
    for (i, backend) in backends.iter().enumerate() {
        for id in backend.received() {
            assert!(at.insert(id, i).is_none(), "update {id} delivered twice");
        }
    }
    at
}

/// Chat ids: private chats and supergroups.
fn chats() -> Vec<i64> {
    (0..40)
        .map(|i| 100_000 + i * 7919)
        .chain((0..20).map(|i| -1_002_000_000_000 - i * 104_729))
        .collect()
}

/// Posts one message for each chat and returns the backend of each.
async fn route_all(poster: &mut Poster, backends: &[Backend]) -> BTreeMap<i64, usize> {
    let mut ids = Vec::new();
    for chat in chats() {
        ids.push((chat, poster.message("message", chat).await));
    }
    let at = landing(backends);
    ids.into_iter().map(|(chat, id)| (chat, at[&id])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_update_of_a_chat_lands_on_one_backend_and_chats_spread() {
    let Some((backends, proxy)) = setup(3).await else {
        return;
    };
    let mut poster = Poster::new(&proxy);
    let mut updates: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for round in 0..2 {
        for chat in chats() {
            let mut ids = vec![
                poster.message("message", chat).await,
                poster.press(chat).await,
                poster.message("edited_message", chat).await,
                poster.message("business_message", chat).await,
                poster.message("edited_business_message", chat).await,
                poster
                    .post(
                        "message_reaction",
                        json!({ "chat": message(chat)["chat"], "message_id": 7, "date": 1 }),
                    )
                    .await,
            ];
            if chat > 0 && round == 0 {
                // A Business connection goes where its creator's private
                // chat goes; a deletion in a fan chat where the fan chat goes.
                ids.push(
                    poster
                        .post(
                            "business_connection",
                            json!({ "id": "c1", "user": user(chat), "user_chat_id": chat,
                                    "date": 1, "is_enabled": true }),
                        )
                        .await,
                );
                ids.push(
                    poster
                        .post(
                            "deleted_business_messages",
                            json!({ "business_connection_id": "c1",
                                    "chat": message(chat)["chat"], "message_ids": [7] }),
                        )
                        .await,
                );
                // A button under an inline-mode message has no chat: it
                // goes where its presser's private chat goes.
                ids.push(
                    poster
                        .post(
                            "callback_query",
                            json!({ "id": "q2", "from": user(chat), "inline_message_id": "i1",
                                    "chat_instance": "ci", "data": "x" }),
                        )
                        .await,
                );
            }
            updates.entry(chat).or_default().extend(ids);
        }
    }
    let at = landing(&backends);
    let mut per_backend = vec![0; backends.len()];
    for (chat, ids) in &updates {
        let places: BTreeSet<usize> = ids.iter().map(|id| at[id]).collect();
        assert_eq!(
            places.len(),
            1,
            "chat {chat} split over backends {places:?}"
        );
        per_backend[*places.first().unwrap()] += 1;
    }
    eprintln!("chats per backend: {per_backend:?}");
    assert!(
        per_backend.iter().all(|&n| n >= chats().len() / 10),
        "chats per backend: {per_backend:?}"
    );
}

/// Posts a message of each of `probe`'s chats until none lands on backend
/// `on` (`gone`) or until one does (`!gone`); returns how long it took.
async fn wait_routing(
    poster: &mut Poster,
    backends: &[Backend],
    probe: &[i64],
    on: usize,
    gone: bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let before = backends[on].received().len();
        for &chat in probe {
            poster.message("message", chat).await;
        }
        let reached = backends[on].received().len() > before;
        if reached != gone {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "routing did not change within 3 s (gone: {gone})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unready_backend_loses_its_chats_and_gets_them_back() {
    let Some((backends, proxy)) = setup(3).await else {
        return;
    };
    let mut poster = Poster::new(&proxy);
    let before = route_all(&mut poster, &backends).await;
    let drained = 0;
    let its_chats: Vec<i64> = before
        .iter()
        .filter(|(_, b)| **b == drained)
        .map(|(c, _)| *c)
        .collect();
    assert!(!its_chats.is_empty(), "{before:?}");

    backends[drained].set_ready(false);
    let took = wait_routing(&mut poster, &backends, &its_chats, drained, true).await;
    eprintln!("drained after {took:?}");
    assert!(took < Duration::from_secs(2), "drained after {took:?}");
    let during = route_all(&mut poster, &backends).await;
    for (chat, backend) in &before {
        if *backend == drained {
            assert_ne!(
                during[chat], drained,
                "chat {chat} still on the drained one"
            );
        } else {
            // Consistent hashing: the other chats stay where they were.
            assert_eq!(during[chat], *backend, "chat {chat} moved needlessly");
        }
    }

    backends[drained].set_ready(true);
    let took = wait_routing(&mut poster, &backends, &its_chats, drained, false).await;
    eprintln!("back after {took:?}");
    assert!(took < Duration::from_secs(2), "back after {took:?}");
    let after = route_all(&mut poster, &backends).await;
    assert_eq!(after, before, "chats did not come back where they were");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_without_a_chat_still_go_somewhere() {
    let Some((backends, proxy)) = setup(2).await else {
        return;
    };
    let mut poster = Poster::new(&proxy);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            poster
                .post(
                    "poll",
                    json!({ "id": format!("p{i}"), "question": "?", "options": [],
                            "total_voter_count": 0, "is_closed": false, "is_anonymous": true,
                            "type": "regular", "allows_multiple_answers": false }),
                )
                .await,
        );
    }
    let at = landing(&backends);
    assert!(ids.iter().all(|id| at.contains_key(id)));
    // Keyed by the update id: spread, not all on one.
    let places: BTreeSet<usize> = ids.iter().map(|id| at[id]).collect();
    assert_eq!(places.len(), 2, "{at:?}");

    // Not even JSON: round robin, still delivered.
    assert_eq!(poster.post_raw("not json".to_owned()).await, 200);
    let total: usize = backends.iter().map(|b| b.received().len()).sum();
    assert_eq!(total, ids.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_other_methods_are_refused_at_the_proxy() {
    let Some((backends, proxy)) = setup(1).await else {
        return;
    };
    let poster = Poster::new(&proxy);
    let limit = 1_048_576;
    let big = format!("{{\"update_id\":1,\"pad\":\"{}\"}}", "x".repeat(limit));
    assert_eq!(poster.post_raw(big).await, 413);
    let get = reqwest::get(format!("http://{}/webhook", proxy.addr()))
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    // Just under the limit still passes (routed by the update id).
    let under = format!("{{\"update_id\":2,\"pad\":\"{}\"}}", "x".repeat(limit - 40));
    assert_eq!(poster.post_raw(under).await, 200);
    assert_eq!(backends[0].received(), vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_to_a_dead_instance_is_sent_to_another() {
    if !haproxy::available() {
        eprintln!("skipped: no haproxy binary (apt-get install haproxy)");
        return;
    }
    // The third instance died a moment ago: its health check still passes
    // (its ops port answers, as before the next check), its webhook port
    // refuses connections.
    let alive = [Backend::start().await, Backend::start().await];
    let dead = Backend::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut pairs: Vec<_> = alive.iter().map(Backend::pair).collect();
    pairs.push((closed, dead.ops));
    let proxy = tokio::task::spawn_blocking(move || TempHaproxy::start(&pairs))
        .await
        .unwrap()
        .unwrap();
    let mut poster = Poster::new(&proxy);
    let mut ids = Vec::new();
    let start = Instant::now();
    for chat in chats() {
        ids.push(poster.message("message", chat).await);
    }
    let at = landing(&alive);
    assert!(ids.iter().all(|id| at.contains_key(id)), "{at:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn the_shipped_file_is_valid_as_a_whole() {
    if !haproxy::available() {
        eprintln!("skipped: no haproxy binary (apt-get install haproxy)");
        return;
    }
    // Everything as shipped (global, stats, TLS defaults) but the
    // certificate, which exists only on the proxy host.
    let tls = " ssl crt /etc/haproxy/certs/llmgram.pem alpn http/1.1";
    assert!(haproxy::SHIPPED_CONFIG.contains(tls));
    let config = haproxy::SHIPPED_CONFIG.replace(tls, "");
    let path =
        std::env::temp_dir().join(format!("llmgram-haproxy-check-{}.cfg", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

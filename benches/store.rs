//! Persistence benchmark: durable turns per second through group commit, and
//! bytes on disk per stored turn.
//!
//! It runs the real persistence actor and its writer thread on a fresh fjall
//! database in a temp directory, exactly as the service does, minus Telegram
//! and the LLM. `--chats` concurrent chats each commit `--turns` turns one
//! after another (a session waits for each commit before the next turn, as
//! in the service). Each turn stores the chat's whole record: a history of
//! the last `--history` messages of `--chars` characters each.
//!
//! ```sh
//! cargo bench --bench store -- --chats 1000 --turns 20 --mode SyncData
//! cargo bench --bench store -- --chats 1000 --turns 20 --mode SyncData --memtable-mib 8
//! ```
//!
//! `--memtable-mib N` overrides `storage.memtable_mib` (config/default.toml's
//! otherwise), to weigh memory against flushes.
//!
//! Prints turns/s (all turns ÷ wall time, every one durable with the chosen
//! mode before it counts), commit latency as a session sees it (p50/p99),
//! commits and mean batch size, and bytes on disk per turn (the database
//! directory after the run ÷ turns).

// A benchmark aborts with a message when its setup fails.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use llmgram::actors::Directory;
use llmgram::actors::root::persistence::{self, RecordChange};
use llmgram::config::Config;
use llmgram::store::record::{self, ChatRecord, StoredMessage, StoredRole};
use llmgram::store::writer::StoreWriter;
use llmgram::telegram::inbound::ChatId;

struct Args {
    chats: usize,
    turns: usize,
    history: usize,
    chars: usize,
    mode: String,
    /// `storage.memtable_mib`; `None` keeps config/default.toml's.
    memtable_mib: Option<u64>,
}

fn parse_args() -> Args {
    let mut args = Args {
        chats: 1000,
        turns: 20,
        history: 10,
        chars: 200,
        mode: "SyncData".into(),
        memtable_mib: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("flag needs a value");
        match flag.as_str() {
            "--chats" => args.chats = value().parse().expect("--chats N"),
            "--turns" => args.turns = value().parse().expect("--turns N"),
            "--history" => args.history = value().parse().expect("--history N"),
            "--chars" => args.chars = value().parse().expect("--chars N"),
            "--mode" => args.mode = value(),
            "--memtable-mib" => {
                args.memtable_mib = Some(value().parse().expect("--memtable-mib N"));
            }
            // cargo bench passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    args
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn chat(
    directory: Directory,
    chat_id: i64,
    first_update: u32,
    args_turns: usize,
    history: usize,
    chars: usize,
) -> Vec<Duration> {
    let mut record = ChatRecord::default();
    let mut latencies = Vec::with_capacity(args_turns);
    for turn in 0..args_turns {
        let text = |tag: &str| format!("{tag}{turn} {}", "x".repeat(chars.saturating_sub(8)));
        record.history.push(StoredMessage {
            role: StoredRole::User,
            content: text("q"),
            files: Vec::new(),
        });
        record.history.push(StoredMessage {
            role: StoredRole::Assistant,
            content: text("a"),
            files: Vec::new(),
        });
        let excess = record.history.len().saturating_sub(history);
        record.history.drain(..excess);
        let update_id = first_update + turn as u32;
        record.recent_updates.push(update_id);
        let excess = record
            .recent_updates
            .len()
            .saturating_sub(record::RECENT_UPDATES);
        record.recent_updates.drain(..excess);
        record.counters.answered += 1;
        let bytes = record::encode_chat(&record).expect("encode");
        let started = Instant::now();
        directory
            .persistence()
            .commit_turn(
                &ChatId(chat_id).into(),
                update_id,
                &[],
                &RecordChange::Put(bytes),
            )
            .await
            .expect("committed");
        latencies.push(started.elapsed());
    }
    latencies
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let memtable = args
        .memtable_mib
        .map(|mib| format!("storage.memtable_mib = {mib}\n"))
        .unwrap_or_default();
    let config = Config::from_defaults_with(&format!(
        "storage.path = \"{}\"\nstorage.persist_mode = \"{}\"\n{memtable}",
        data.display(),
        args.mode
    ))
    .expect("config");

    runtime.block_on(async {
        let (writer, thread) = StoreWriter::start(&config.storage).expect("store opens");
        let directory = Directory::new("bench", &config.supervision);
        let store = persistence::start_unsupervised(&directory, writer)
            .await
            .expect("actor");

        let started = Instant::now();
        let tasks: Vec<_> = (0..args.chats)
            .map(|c| {
                tokio::spawn(chat(
                    directory.clone(),
                    c as i64 + 1,
                    (c * args.turns) as u32 + 1,
                    args.turns,
                    args.history,
                    args.chars,
                ))
            })
            .collect();
        let mut latencies = Vec::with_capacity(args.chats * args.turns);
        for task in tasks {
            latencies.extend(task.await.expect("chat task"));
        }
        let elapsed = started.elapsed();
        let stats = directory.persistence().stats().await.expect("stats");
        store.stop(None);
        drop(store);
        // The writer ends once the actor's handle is gone; wait for its final
        // persist so the directory size is complete.
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join")
            .expect("writer thread");

        latencies.sort();
        let turns = latencies.len();
        let bytes = dir_size(&data);
        let turns_per_s = turns as f64 / elapsed.as_secs_f64();
        println!(
            "store: chats={} turns/chat={} history={} chars={} mode={}",
            args.chats, args.turns, args.history, args.chars, args.mode
        );
        println!("  durable turns/s      {turns_per_s:.0}");
        println!(
            "  commit latency       p50 {:.2} ms, p99 {:.2} ms",
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3
        );
        println!(
            "  commits              {} (mean batch {:.1} turns)",
            stats.commits,
            stats.turns as f64 / stats.commits.max(1) as f64
        );
        println!(
            "  bytes on disk        {bytes} ({:.0} per turn)",
            bytes as f64 / turns as f64
        );
        println!(
            "summary store chats={} turns={} mode={} turns_per_s={turns_per_s:.0} p99_ms={:.2} bytes_per_turn={:.0}",
            args.chats,
            turns,
            args.mode,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            bytes as f64 / turns as f64
        );
    });
}

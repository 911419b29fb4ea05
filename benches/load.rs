//! Load benchmark: the real `llmgram` binary against loopback fakes.
//!
//! # Scenario
//!
//! The benchmark starts the fake Telegram Bot API and the fake
//! OpenAI-compatible LLM (crate `llmgram-fakes`) in its own process, then
//! spawns the release build of the bot (`CARGO_BIN_EXE_llmgram`) as a child
//! process configured through environment variables only: both fakes'
//! URLs, a fresh storage directory, `llm.max_concurrency` raised to
//! `--llm-concurrency` and `log.level = warn` (the bot's stderr goes to a file
//! in the temporary directory).
//!
//! Once the bot polls `getUpdates`, `U` chats (ids `1..=U`, user id = chat id)
//! run concurrently in a closed loop, one tokio task each: chat `c` pushes its
//! message `k` with the unique text `c{c}-m{k}`, waits for the bot's reply
//! carrying that marker (the fake LLM answers `answer to: c{c}-m{k}`), then
//! pushes message `k + 1`, until it has sent `K` messages. A single dispatcher
//! task reads every `sendMessage` the fake receives and routes it to its
//! chat's task. Every reply must carry the marker of the message it answers,
//! in order per chat, with no duplicates; anything else is a violation.
//!
//! # Running
//!
//! ```text
//! cargo bench --bench load -- --chats 1000 --messages 10 --llm-latency-ms 0
//! cargo bench --bench load -- --rate 500 --duration-secs 20 --llm-latency-ms 200
//! cargo bench --bench load -- --chats 100000 --messages 2 --idle-secs 180 \
//!     --timeout-secs 300 --set session.idle_timeout=60s --set session.sweep_interval=5s
//! cargo bench --bench load -- --startups 5
//! cargo bench --bench load -- --chats 1000 --messages 30 --chaos-every-ms 100
//! cargo bench --bench load -- --chats 200 --messages 2 --llm-latency-ms 50 \
//!     --photo-bytes 204800 --set media.max_concurrent_downloads=2
//! ```
//!
//! Options (defaults in brackets):
//!
//! * `--chats U` [1000], `--messages K` [10];
//! * `--llm-latency-ms MS` [0]: delay of every fake LLM answer;
//! * `--llm-concurrency N` [256]: the bot's `llm.max_concurrency` (its
//!   default of 16 would throttle a 0 ms LLM);
//! * `--timeout-secs S` [120]: limit of the measured phase;
//! * `--think-ms MS` [0]: pause of a chat between a reply and its next
//!   message, with the chats' first messages spread over one pause. The
//!   default 0 saturates the bot (every chat always has a message in flight);
//!   a pause paces the load instead, e.g. 1000 chats with `--think-ms 1000`
//!   offer about 1,000 messages/s, to see the overhead below saturation;
//! * `--rate R --duration-secs D` [off, 20]: **open loop** instead of the
//!   closed loop: `R` messages a second are pushed on a fixed schedule for
//!   `D` seconds, whatever the replies do (message `i` to chat `i mod U + 1`,
//!   so each chat sends every `U / R` seconds). How far the pusher fell
//!   behind its schedule is printed;
//! * `--idle-secs S` [off]: **memory** mode: the bot's `VmRSS` is read 2 s
//!   after its first poll (idle baseline); after the run, RSS and the
//!   `llmgram_sessions_active` gauge (ops `/metrics`) are sampled every
//!   0.5 s until no session is live plus 5 s, at most `S` seconds. Pair it
//!   with `--set session.idle_timeout=...` longer than the run, so every
//!   session is live at the end of it;
//! * `--startups N` [off]: **start-up** mode: starts the bot `N` times on a
//!   fresh store and reports spawn → first `getUpdates` (median, min, max);
//!   no load;
//! * `--chaos-every-ms MS` [off]: **chaos** mode: every `MS` an actor is made
//!   to panic through the ops hook `POST /chaos/panic?actor=NAME` (compiled
//!   only with the `chaos` feature, which `cargo bench` builds because the
//!   crate's dev-dependency on itself enables it), in turn: persistence,
//!   breaker.0, limiter, llm_pool, outbox, session_sup, ingress and the
//!   session of a pseudo-random chat. `--chaos-only NAME` (repeatable)
//!   restricts the victims. The restart budget is lifted
//!   (`supervision.max_restarts`), since panics every 100 ms exceed any sane
//!   budget. A reply quoting no message counts as a fallback answer, not a
//!   violation; a second reply to a message is a violation;
//! * `--photo-bytes N` [off]: **media** mode: every message is a photo
//!   instead of a text, captioned with its marker (the fake LLM's echo of
//!   the caption routes the reply as in text mode). Each photo is a file of
//!   its own registered with the fake Bot API (one size, a 1280×960 JPEG
//!   header padded to `N` bytes), which the bot resolves with `getFile`,
//!   downloads and sends to the LLM as a data URL. Every LLM request must
//!   carry an image (else a violation). The bot's RSS is sampled every
//!   100 ms during the run; the fake LLM keeps no request bodies nor image
//!   data (`FakeLlm::set_lean_records`). Works with the closed and the open
//!   loop. The overhead then includes `getFile`, the download and the
//!   base64 encoding. Pair it with `--set media.max_concurrent_downloads=N`
//!   to see what bounds the memory;
//! * `LLMGRAM_BENCH_WRAPPER="heaptrack -o FILE"` (environment): runs the bot
//!   under a profiler (the `/proc` figures then describe the wrapper). Add
//!   `--features system-alloc`: heaptrack hooks malloc and sees nothing of
//!   jemalloc. The bench stops the wrapper, not the bot, which keeps running
//!   (and the trace open): `kill` the leftover bot by its pid to end the
//!   trace; ended while sessions are live, heaptrack's "leaked" view is
//!   exactly what they hold;
//! * `LLMGRAM_BENCH_BIN=PATH` (environment): runs that build of the bot
//!   instead of the one `cargo bench` built, to compare two commits or
//!   features with the same bench (copy each build aside first);
//! * `--stream on|off` [the bot's default, on]: streamed answers
//!   (`llm.stream`). On, each answer arrives in 4 chunks
//!   `--stream-chunk-ms MS` [0] apart and is shown live: as a draft
//!   (`sendMessageDraft`: this bench's chats are private), then sent as
//!   one message, which is the reply measured. (The edited live message of
//!   `--set telegram.drafts=false` is not measurable here: its first
//!   `sendMessage` is a partial answer, which the reply check refuses.)
//!   Off (the setting of every run before issue 16), answers come whole.
//!   The `telegram calls` line shows what streaming costs in Bot API calls;
//! * `--set section.key=value` (repeatable): any other bot setting, passed
//!   as `LLMGRAM_SECTION__KEY=value`, e.g.
//!   `--set llm.pool_max_idle_per_host=256`.
//!
//! Run it on an otherwise idle machine: the `cpu during run` line shows how
//! much CPU other processes took while it ran.
//!
//! # Figures
//!
//! * `replies/s`: `U × K` divided by the time from the first push to the
//!   arrival of the last reply at the fake Telegram.
//! * `overhead`: per message, the time from the fake's `getUpdates` first
//!   returning the update to the fake receiving the bot's `sendMessage`, minus
//!   the fake LLM's delay; i.e. what the bot adds around the LLM call
//!   (decoding, actor hops, history, the LLM HTTP round trip without the
//!   delay, the send, and any queueing inside the bot). Reported as p50 /
//!   p99 / p99.9 / max in milliseconds. It excludes the wait of an update in
//!   the fake's queue for the next poll. In a saturating closed loop it is
//!   mostly queueing inside the bot. It is split at the moment the fake LLM received the request (`delivery
//!   -> LLM request` and `LLM request -> sendMessage`), and shown per message
//!   number `k` (the first messages also pay for connections and new
//!   sessions).
//! * `end to end`: per message, from its push to the fake receiving the
//!   reply, minus the LLM delay: the overhead plus the wait in the fake's
//!   update queue for the bot's next `getUpdates`. In a saturating closed
//!   loop it is about `U / replies per second` (Little's law), wherever the
//!   queue forms.
//! * `cpu during run`: CPU seconds of the bot, of this process (load
//!   generator and both fakes) and of everything else, from `/proc`.
//! * `peak RSS`: `VmHWM` of the bot process read from `/proc/<pid>/status`
//!   just before it is stopped, with `VmRSS` at that moment.
//! * `LLM requests` seen by the fake (should be `U × K`) and the largest
//!   number it served at once.
//! * `telegram calls`: Bot API calls per method received by the fake.
//! * `tcp connections the bot opened to the fakes`, counted in
//!   `/proc/net/tcp` after the bot exited (from the sockets in TIME_WAIT,
//!   which Linux keeps for 60 s; longer runs undercount). Many more LLM
//!   connections than `llm.max_concurrency` mean the connection pool keeps
//!   too few idle connections.
//! * The bot's exit status after SIGTERM (0 is a clean shutdown) and the
//!   lines it logged at level warn or above.
//!
//! * memory mode: idle baseline, peak (`VmHWM`), RSS and live sessions
//!   after the last reply, RSS per live session (RSS − baseline) ÷
//!   sessions, when the last session was evicted and RSS after eviction
//!   (at the baseline and after eviction also split into `RssAnon`, the
//!   heap and stacks, and `RssFile`, the mapped binary and libraries),
//!   plus a `summary-memory` line.
//! * media mode: `getFile` calls and file downloads the fake served, the
//!   LLM requests with and without an image, the peak RSS and the largest
//!   of the RSS samples taken during the run, plus a `summary-media` line.
//! * The overhead subtracts the nominal LLM delay; the fake sleeps on
//!   tokio's 1 ms timer, so up to about 1 ms of timer overshoot counts as
//!   overhead (the figure errs high).
//!
//! Both fakes run in this process, on the same cores as the bot, so the
//! figures are a lower bound of what the bot alone can do.
//!
//! The process exits non-zero when a reply is missing, a violation was seen or
//! the bot did not shut down cleanly (the temporary directory with the bot's
//! log is then kept and its path printed). The last line is a one-line
//! summary.

// A benchmark aborts with a clear message when its setup fails (no loopback,
// no temporary directory, no binary); `expect` is the way to say why.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use llmgram_fakes::{FakeLlm, FakeTelegram, LlmRequest, MediaUpdate, SentMessage, jpeg};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::{JoinHandle, JoinSet};

/// How long the bot may take to start polling `getUpdates`.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);
/// How long the bot may take to exit after SIGTERM before it is killed.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(15);
/// How often the child process is checked while waiting.
const CHILD_POLL: Duration = Duration::from_millis(50);
/// Quiet time after the last expected reply, to catch late duplicates.
const SETTLE: Duration = Duration::from_millis(300);
/// Most rounds (messages per chat) for which overhead is printed per round.
const MAX_ROUNDS_SHOWN: usize = 20;
/// Most violations and log lines printed one by one.
const SHOW_MAX: usize = 20;

/// Command-line options.
#[derive(Debug, Clone)]
struct Options {
    chats: u32,
    messages: u32,
    llm_latency: Duration,
    llm_concurrency: u32,
    timeout: Duration,
    think: Duration,
    /// Open-loop mode: messages per second offered on a fixed schedule.
    rate: Option<u32>,
    /// Open-loop mode: how long the schedule runs.
    duration: Duration,
    /// Memory mode: after the run, wait up to this long for every session to
    /// be evicted, sampling the bot's RSS.
    idle: Option<Duration>,
    /// Start-up mode: start the bot this many times, report spawn → first
    /// `getUpdates`, and stop.
    startups: Option<u32>,
    /// Chaos mode: make an actor panic this often during the run.
    chaos_every: Option<Duration>,
    /// Chaos mode: only these victims (names of [`CHAOS_VICTIMS`]); empty
    /// means all of them.
    chaos_only: Vec<String>,
    /// Media mode: every message is a photo of this many bytes captioned
    /// with its marker.
    photo_bytes: Option<usize>,
    /// Pause between the chunks of a streamed answer (the fake LLM's).
    stream_chunk: Duration,
    /// Extra `LLMGRAM_*` variables for the bot, from `--set section.key=value`
    /// (and `--stream`).
    extra_env: Vec<(String, String)>,
    /// `--backend postgres`: the bot's store is a throwaway PostgreSQL
    /// (`llmgram_fakes::TempPostgres`, on this disk, fsync on) instead of
    /// fjall.
    postgres: bool,
}

impl Options {
    const USAGE: &'static str = "usage: cargo bench --bench load -- [--chats U] [--messages K] \
         [--llm-latency-ms MS] [--llm-concurrency N] [--timeout-secs S] [--think-ms MS] \
         [--rate R --duration-secs D] [--idle-secs S] [--startups N] \
         [--chaos-every-ms MS [--chaos-only NAME]...] [--photo-bytes N] \
         [--stream on|off [--stream-chunk-ms MS]] [--backend fjall|postgres] \
         [--set section.key=value]...";

    /// Parses `--name value` pairs; ignores the `--bench` flag cargo adds.
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
        let mut options = Options {
            chats: 1000,
            messages: 10,
            llm_latency: Duration::ZERO,
            llm_concurrency: 256,
            timeout: Duration::from_secs(120),
            think: Duration::ZERO,
            rate: None,
            duration: Duration::from_secs(20),
            idle: None,
            startups: None,
            chaos_every: None,
            chaos_only: Vec::new(),
            photo_bytes: None,
            stream_chunk: Duration::ZERO,
            extra_env: Vec::new(),
            postgres: false,
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if flag == "--bench" {
                continue;
            }
            if flag == "--help" || flag == "-h" {
                return Err(Self::USAGE.to_owned());
            }
            let value = args
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{}", Self::USAGE))?;
            let number = |min: u64| -> Result<u64, String> {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= min)
                    .ok_or_else(|| format!("{flag}: expected an integer >= {min}, got {value:?}"))
            };
            let small = |n: u64| u32::try_from(n).map_err(|_| format!("{flag}: {n} is too large"));
            match flag.as_str() {
                "--chats" => options.chats = small(number(1)?)?,
                "--messages" => options.messages = small(number(1)?)?,
                "--llm-latency-ms" => options.llm_latency = Duration::from_millis(number(0)?),
                "--llm-concurrency" => options.llm_concurrency = small(number(1)?)?,
                "--timeout-secs" => options.timeout = Duration::from_secs(number(1)?),
                "--think-ms" => options.think = Duration::from_millis(number(0)?),
                "--rate" => options.rate = Some(small(number(1)?)?),
                "--duration-secs" => options.duration = Duration::from_secs(number(1)?),
                "--idle-secs" => options.idle = Some(Duration::from_secs(number(1)?)),
                "--startups" => options.startups = Some(small(number(1)?)?),
                "--chaos-only" if CHAOS_VICTIMS.contains(&value.as_str()) => {
                    options.chaos_only.push(value.clone());
                }
                "--chaos-every-ms" => {
                    options.chaos_every = Some(Duration::from_millis(number(1)?));
                }
                "--photo-bytes" => {
                    let bytes = number(1)?;
                    options.photo_bytes = Some(
                        usize::try_from(bytes)
                            .map_err(|_| format!("{flag}: {bytes} is too large"))?,
                    );
                }
                "--stream" => {
                    let on = match value.as_str() {
                        "on" => "true",
                        "off" => "false",
                        _ => return Err(format!("{flag}: expected on or off, got {value:?}")),
                    };
                    options
                        .extra_env
                        .push(Self::config_env(&format!("llm.stream={on}"))?);
                }
                "--stream-chunk-ms" => options.stream_chunk = Duration::from_millis(number(0)?),
                "--set" => options.extra_env.push(Self::config_env(&value)?),
                "--backend" => {
                    options.postgres = match value.as_str() {
                        "fjall" => false,
                        "postgres" => true,
                        _ => {
                            return Err(format!(
                                "{flag}: expected fjall or postgres, got {value:?}"
                            ));
                        }
                    };
                }
                _ => return Err(format!("unknown option {flag}\n{}", Self::USAGE)),
            }
        }
        Ok(options)
    }

    /// The bot's environment variable for `section.key=value`.
    fn config_env(setting: &str) -> Result<(String, String), String> {
        let parsed = setting
            .split_once('=')
            .and_then(|(key, value)| Some((key.split_once('.')?, value)));
        let Some(((section, key), value)) = parsed else {
            return Err(format!(
                "--set: expected section.key=value, got {setting:?}"
            ));
        };
        let name = format!("LLMGRAM_{section}__{key}").to_ascii_uppercase();
        Ok((name, value.to_owned()))
    }

    /// Messages the run sends: `U × K`, or in open-loop mode `R × D`.
    fn total(&self) -> usize {
        match self.rate {
            Some(rate) => rate as usize * self.duration.as_secs() as usize,
            None => self.chats as usize * self.messages as usize,
        }
    }
}

/// One answered message: which update it answered and when the reply came.
#[derive(Debug, Clone)]
struct Answered {
    /// Which message of its chat this was (1-based).
    round: u32,
    marker: String,
    update_id: i64,
    pushed_at: Instant,
    replied_at: Instant,
    /// The reply was not the LLM's answer but a fallback text (chaos mode
    /// only: e.g. an apology after a crash). Still exactly one reply.
    fallback: bool,
}

/// What one chat's closed loop observed.
#[derive(Debug, Default)]
struct ChatOutcome {
    answered: Vec<Answered>,
    /// Messages pushed or not yet pushed that got no reply before the limit.
    missing: usize,
    /// Replies that were not the expected one (wrong marker, duplicate, out
    /// of order), described.
    violations: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    println!(
        "load: chats={} messages={} llm_latency_ms={} llm_concurrency={} timeout_secs={} \
         think_ms={} rate={} duration_secs={} idle_secs={} chaos_every_ms={} photo_bytes={}",
        options.chats,
        options.messages,
        options.llm_latency.as_millis(),
        options.llm_concurrency,
        options.timeout.as_secs(),
        options.think.as_millis(),
        options.rate.map_or("-".to_owned(), |r| r.to_string()),
        options.duration.as_secs(),
        options
            .idle
            .map_or("-".to_owned(), |d| d.as_secs().to_string()),
        options
            .chaos_every
            .map_or("-".to_owned(), |d| d.as_millis().to_string()),
        options
            .photo_bytes
            .map_or("-".to_owned(), |n| n.to_string()),
    );
    if let Some(runs) = options.startups {
        return startup_series(&options, runs).await;
    }

    // Set-up: both fakes here, the bot as a child process (and its
    // PostgreSQL, with `--backend postgres`).
    let mut options = options;
    let _postgres = if options.postgres {
        let db = tokio::task::spawn_blocking(llmgram_fakes::TempPostgres::start)
            .await
            .expect("the PostgreSQL start task")
            .expect("a throwaway PostgreSQL (install the postgresql package)");
        println!("store: postgres on 127.0.0.1:{}", db.port());
        options
            .extra_env
            .push(("LLMGRAM_STORAGE__BACKEND".into(), "postgres".into()));
        options
            .extra_env
            .push(("LLMGRAM_STORAGE__POSTGRES__URL".into(), db.url()));
        Some(db)
    } else {
        None
    };
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    llm.set_latency(options.llm_latency);
    llm.set_stream_chunk_delay(options.stream_chunk);
    // Hundreds of megabytes of images would otherwise stay recorded here.
    llm.set_lean_records(options.photo_bytes.is_some());
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let log_path = dir.path().join("llmgram.stderr.log");
    println!(
        "fakes: telegram {} llm {}",
        telegram.api_url(),
        llm.base_url()
    );
    for (name, value) in &options.extra_env {
        if name.ends_with("POSTGRES__URL") {
            continue;
        }
        println!("bot config: {name}={value}");
    }
    let ops_addr = free_loopback_addr();
    let spawned_at = Instant::now();
    let mut child = spawn_bot(
        &options,
        &telegram,
        &llm,
        &dir.path().join("storage"),
        &log_path,
        ops_addr,
    );
    let pid = child.id();
    if let Err(why) = wait_for_polling(&telegram, &mut child, 0).await {
        eprintln!("load: {why}");
        let _ = child.kill();
        let _ = child.wait();
        dump_log(&log_path);
        let _ = dir.keep();
        return ExitCode::FAILURE;
    }
    let startup = spawned_at.elapsed();
    println!(
        "bot pid {pid} polling after {:.0} ms",
        startup.as_secs_f64() * 1e3
    );

    // Memory mode: the idle baseline, once start-up work has settled.
    let ops = Ops::new(ops_addr);
    let baseline = if options.idle.is_some() {
        tokio::time::sleep(BASELINE_SETTLE).await;
        let baseline = read_memory(pid).1;
        println!("memory: idle baseline RSS {}", show_kib(baseline));
        println!("memory: idle baseline split {}", memory_split(pid));
        baseline
    } else {
        None
    };

    // The measured run, with panics ordered from outside in chaos mode.
    let chaos = options
        .chaos_every
        .map(|every| ops.start_chaos(every, options.chats, &options.chaos_only));
    let sampler = options.photo_bytes.map(|_| RssSampler::start(pid));
    let run = if let Some(rate) = options.rate {
        run_open_loop(&options, rate, &telegram, &mut child).await
    } else {
        run_load(&options, &telegram, &mut child).await
    };
    let rss_samples = match sampler {
        Some(sampler) => sampler.stop().await,
        None => Vec::new(),
    };
    let chaos = chaos.map(|(tally, task)| {
        task.abort();
        tally
    });
    let run = match run {
        Ok(run) => run,
        Err(status) => {
            eprintln!("load: the bot exited during the run ({status})");
            dump_log(&log_path);
            let _ = dir.keep();
            return ExitCode::FAILURE;
        }
    };

    // Memory mode: RSS with every session live, then idle until evicted.
    let memory = if let Some(idle) = options.idle {
        Some(idle_phase(&ops, pid, baseline, idle).await)
    } else {
        None
    };

    // Figures only the running bot and the fakes know.
    let (vm_hwm, vm_rss) = read_memory(pid);
    let llm_requests = llm.request_count();
    let llm_max_in_flight = llm.max_in_flight();
    let telegram_calls = [
        "getUpdates",
        "sendMessage",
        "sendChatAction",
        "editMessageText",
        "sendMessageDraft",
        "getFile",
    ]
    .map(|m| (m, telegram.method_calls(m)));
    let downloads = telegram.downloads();

    let stop_started = Instant::now();
    let exit = stop_bot(&mut child).await;
    let stop_took = stop_started.elapsed();
    let connections = [("telegram", telegram.api_url()), ("llm", llm.base_url())]
        .map(|(name, url)| (name, port_of(&url).and_then(connections_to)));

    // Report.
    let total = options.total();
    let analysis = Analysis::of(run, &options, &telegram, &llm);
    println!(
        "replies: {}/{total} in {:.3} s (first push to last reply)",
        analysis.answered,
        analysis.elapsed.as_secs_f64()
    );
    println!("throughput: {:.1} replies/s", analysis.replies_per_s);
    println!(
        "overhead ms (sendMessage at - getUpdates delivery - {} ms LLM): {}",
        options.llm_latency.as_millis(),
        analysis.overhead
    );
    println!("  of which delivery -> LLM request ms: {}", analysis.to_llm);
    println!(
        "  of which LLM request -> sendMessage (- LLM delay) ms: {}",
        analysis.after_llm
    );
    println!(
        "end to end ms (sendMessage at - push - {} ms LLM): {}",
        options.llm_latency.as_millis(),
        analysis.end_to_end
    );
    if analysis.by_round.len() <= MAX_ROUNDS_SHOWN {
        println!("  overhead by message number in its chat, ms:");
        for (round, percentiles) in &analysis.by_round {
            println!("    #{round:<3} {percentiles}");
        }
    }
    println!("{}", analysis.cpu);
    println!(
        "bot memory: peak RSS (VmHWM) {} / RSS now (VmRSS) {}",
        show_kib(vm_hwm),
        show_kib(vm_rss)
    );
    println!("llm: requests={llm_requests} (expected {total}) max_in_flight={llm_max_in_flight}");
    let calls = telegram_calls.iter().fold(String::new(), |mut s, (m, n)| {
        let _ = write!(s, " {m}={n}");
        s
    });
    println!("telegram calls:{calls} (file downloads={downloads})");
    let opened = connections.iter().fold(String::new(), |mut s, (name, n)| {
        match n {
            Some(n) => {
                let _ = write!(s, " {name}={n}");
            }
            None => {
                let _ = write!(s, " {name}=unknown");
            }
        }
        s
    });
    println!("tcp connections the bot opened to the fakes:{opened}");
    println!(
        "phases: startup {:.0} ms, run {:.3} s, shutdown {:.0} ms",
        startup.as_secs_f64() * 1e3,
        analysis.run_secs,
        stop_took.as_secs_f64() * 1e3
    );
    println!("bot exit: {}", show_exit(&exit));
    let log_lines = report_log(&log_path);

    if analysis.missing > 0 {
        println!(
            "MISSING: {} of {total} replies did not arrive within {} s",
            analysis.missing,
            options.timeout.as_secs()
        );
    }
    println!("violations: {}", analysis.violations.len());
    for v in analysis.violations.iter().take(SHOW_MAX) {
        println!("  {v}");
    }
    if analysis.violations.len() > SHOW_MAX {
        println!("  … and {} more", analysis.violations.len() - SHOW_MAX);
    }
    // A duplicate's story: every LLM request and reply of the first chat
    // with a violation.
    if let Some(chat) = analysis
        .violations
        .first()
        .and_then(|v| v.strip_prefix("chat "))
        .and_then(|v| v.split(':').next())
        .and_then(|c| c.parse::<i64>().ok())
    {
        let prefix = format!("c{chat}-m");
        for request in llm.requests() {
            if marker_of(request.last_user_message()).is_some_and(|m| m.starts_with(&prefix)) {
                println!(
                    "  chat {chat}: LLM request {:?} at {}",
                    request.last_user_message(),
                    wall_clock_of(request.at)
                );
            }
        }
        for sent in telegram.sent_to(chat) {
            println!(
                "  chat {chat}: sendMessage {} {:?} at {}",
                sent.message_id,
                sent.text,
                wall_clock_of(sent.at)
            );
        }
    }
    if llm_requests != total {
        println!("note: the fake LLM saw {llm_requests} requests for {total} messages");
    }
    if let Some(tally) = &chaos {
        println!("{tally}");
        println!(
            "replies: {} LLM answers, {} fallback texts (each message still got exactly one reply)",
            analysis.answered - analysis.fallbacks,
            analysis.fallbacks
        );
    }
    if let Some(memory) = &memory {
        println!("{memory}");
    }
    if let Some(photo_bytes) = options.photo_bytes {
        let media = MediaReport {
            photo_bytes,
            photos: total,
            llm: &analysis.images,
            downloads,
            get_file: telegram.method_calls("getFile"),
            peak: vm_hwm,
            samples: &rss_samples,
            download_concurrency: options
                .extra_env
                .iter()
                .find(|(name, _)| name == "LLMGRAM_MEDIA__MAX_CONCURRENT_DOWNLOADS")
                .map_or("default", |(_, value)| value.as_str()),
        };
        println!("{media}");
    }

    let clean_exit = matches!(&exit, Exit::Exited(status) if status.success());
    let errors = analysis.missing + analysis.violations.len();
    let peak_mib = vm_hwm.map_or(f64::NAN, |kib| kib as f64 / 1024.0);
    let overhead = analysis.overhead;
    println!(
        "summary chats={} messages={} llm_latency_ms={} replies_per_s={:.1} \
         p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2} peak_rss_mib={peak_mib:.1} \
         llm_requests={llm_requests} llm_max_in_flight={llm_max_in_flight} \
         e2e_p99_ms={:.2} bot_log_lines={log_lines} bot_exit={} errors={errors} \
         fallbacks={} panics={}",
        options.chats,
        options.messages,
        options.llm_latency.as_millis(),
        analysis.replies_per_s,
        overhead.p50,
        overhead.p99,
        overhead.p999,
        overhead.max,
        analysis.end_to_end.p99,
        show_exit(&exit),
        analysis.fallbacks,
        chaos.as_ref().map_or(0, |t| t.ordered()),
    );
    if errors > 0 || !clean_exit {
        // Keep the log for inspection.
        println!("bot log: {}", log_path.display());
        let _ = dir.keep();
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// What the measured run produced.
struct Run {
    outcomes: Vec<ChatOutcome>,
    /// Messages sent to a chat whose loop had finished, or to no known chat.
    strays: usize,
    started: Instant,
    ended: Instant,
    cpu_before: CpuSample,
    cpu_after: CpuSample,
}

/// Runs every chat's closed loop until all are done or the time limit passes.
/// Fails with the bot's exit status if it exits meanwhile.
async fn run_load(
    options: &Options,
    telegram: &FakeTelegram,
    child: &mut Child,
) -> Result<Run, ExitStatus> {
    // One dispatcher routes every sent message to its chat's task.
    let mut sent = telegram.subscribe_sent();
    let (routes, inboxes): (Vec<_>, Vec<_>) =
        (0..options.chats).map(|_| unbounded_channel()).unzip();
    let strays = Arc::new(AtomicUsize::new(0));
    let dispatcher = {
        let strays = Arc::clone(&strays);
        tokio::spawn(async move {
            let routes: Vec<UnboundedSender<SentMessage>> = routes;
            while let Some(message) = sent.recv().await {
                let route = usize::try_from(message.chat_id - 1)
                    .ok()
                    .and_then(|i| routes.get(i));
                // A failed send means the chat's loop has finished.
                if route.is_none_or(|tx| tx.send(message).is_err()) {
                    strays.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let pid = child.id();
    let cpu_before = CpuSample::take(pid);
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + options.timeout);
    let mut chats = JoinSet::new();
    for (index, inbox) in inboxes.into_iter().enumerate() {
        let chat_id = i64::try_from(index + 1).expect("chat ids fit in i64");
        // Paced chats start spread over one think time, not in lockstep.
        let start_after = options
            .think
            .mul_f64(index as f64 / f64::from(options.chats));
        chats.spawn(run_chat(
            telegram.clone(),
            chat_id,
            ChatPlan {
                messages: options.messages,
                think: options.think,
                accept_fallback: options.chaos_every.is_some(),
                photo_bytes: options.photo_bytes,
            },
            start_after,
            inbox,
            deadline,
        ));
    }

    let mut outcomes = Vec::with_capacity(options.chats as usize);
    let mut check_child = tokio::time::interval(CHILD_POLL * 4);
    check_child.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !chats.is_empty() {
        tokio::select! {
            joined = chats.join_next() => {
                if let Some(joined) = joined {
                    outcomes.push(joined.expect("a chat task panicked"));
                }
            }
            _ = check_child.tick() => {
                if let Ok(Some(status)) = child.try_wait() {
                    chats.abort_all();
                    dispatcher.abort();
                    return Err(status);
                }
            }
        }
    }
    let ended = Instant::now();
    let cpu_after = CpuSample::take(pid);
    // Late duplicates arrive after the loop of their chat has finished.
    tokio::time::sleep(SETTLE).await;
    dispatcher.abort();
    Ok(Run {
        outcomes,
        strays: strays.load(Ordering::Relaxed),
        started,
        ended,
        cpu_before,
        cpu_after,
    })
}

/// The figures computed from a run.
struct Analysis {
    answered: usize,
    /// Replies that were a fallback text, not the LLM's answer.
    fallbacks: usize,
    missing: usize,
    violations: Vec<String>,
    /// First push to last reply.
    elapsed: Duration,
    run_secs: f64,
    replies_per_s: f64,
    overhead: Percentiles,
    end_to_end: Percentiles,
    to_llm: Percentiles,
    after_llm: Percentiles,
    by_round: BTreeMap<u32, Percentiles>,
    cpu: String,
    /// What the LLM requests carried in the way of images.
    images: ImageTally,
}

impl Analysis {
    fn of(run: Run, options: &Options, telegram: &FakeTelegram, llm: &FakeLlm) -> Analysis {
        let mut answered = Vec::with_capacity(options.total());
        let mut violations = Vec::new();
        // Every chat loop ran to its end, so each message is answered or
        // missing.
        let mut missing = 0;
        for outcome in run.outcomes {
            answered.extend(outcome.answered);
            violations.extend(outcome.violations);
            missing += outcome.missing;
        }
        if run.strays > 0 {
            violations.push(format!(
                "{} message(s) sent after their chat finished or to an unknown chat",
                run.strays
            ));
        }

        let last_reply = answered.iter().map(|a| a.replied_at).max();
        let elapsed = last_reply.map_or(run.ended - run.started, |at| {
            at.saturating_duration_since(run.started)
        });

        // Per message: getUpdates delivery -> LLM request -> sendMessage.
        let requests = llm.requests();
        let mut llm_arrivals: HashMap<&str, Instant> = HashMap::new();
        for request in &requests {
            if let Some(marker) = marker_of(request.last_user_message()) {
                llm_arrivals.entry(marker).or_insert(request.at);
            }
        }
        let images = ImageTally::of(&requests);
        if options.photo_bytes.is_some() && images.without_image > 0 {
            violations.push(format!(
                "{} LLM request(s) carried no image in media mode",
                images.without_image
            ));
        }
        if images.not_data_urls > 0 {
            violations.push(format!(
                "{} image part(s) were not data:image/jpeg;base64 URLs",
                images.not_data_urls
            ));
        }
        let latency_ms = options.llm_latency.as_secs_f64() * 1e3;
        let mut overheads = Vec::with_capacity(answered.len());
        let mut end_to_end = Vec::with_capacity(answered.len());
        let mut to_llm = Vec::with_capacity(answered.len());
        let mut after_llm = Vec::with_capacity(answered.len());
        let mut by_round: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        let mut undelivered = 0usize;
        for a in &answered {
            end_to_end.push(ms_between(a.pushed_at, a.replied_at) - latency_ms);
            let Some(delivered) = telegram.delivered_at(a.update_id) else {
                undelivered += 1;
                continue;
            };
            let ms = ms_between(delivered, a.replied_at) - latency_ms;
            overheads.push(ms);
            by_round.entry(a.round).or_default().push(ms);
            if let Some(&asked) = llm_arrivals.get(a.marker.as_str()) {
                to_llm.push(ms_between(delivered, asked));
                after_llm.push(ms_between(asked, a.replied_at) - latency_ms);
            }
        }
        if undelivered > 0 {
            violations.push(format!(
                "{undelivered} answered update(s) never returned by getUpdates"
            ));
        }

        let run_secs = (run.ended - run.started).as_secs_f64();
        Analysis {
            answered: answered.len(),
            fallbacks: answered.iter().filter(|a| a.fallback).count(),
            missing,
            violations,
            elapsed,
            run_secs,
            replies_per_s: answered.len() as f64 / elapsed.as_secs_f64(),
            overhead: Percentiles::of(overheads),
            end_to_end: Percentiles::of(end_to_end),
            to_llm: Percentiles::of(to_llm),
            after_llm: Percentiles::of(after_llm),
            by_round: by_round
                .into_iter()
                .map(|(round, values)| (round, Percentiles::of(values)))
                .collect(),
            cpu: run.cpu_after.since(&run.cpu_before, run_secs),
            images,
        }
    }
}

/// Spawns the bot binary configured for the fakes.
fn spawn_bot(
    options: &Options,
    telegram: &FakeTelegram,
    llm: &FakeLlm,
    storage: &Path,
    log_path: &Path,
    ops_addr: SocketAddr,
) -> Child {
    let log = std::fs::File::create(log_path).expect("cannot create the bot's log file");
    // `LLMGRAM_BENCH_WRAPPER="heaptrack -o /tmp/x"` runs the bot under a
    // profiler (figures read from /proc then describe the wrapper).
    // `LLMGRAM_BENCH_BIN=PATH` runs another build of the bot (A/B runs of
    // two commits or features without rebuilding the bench).
    let binary = std::env::var("LLMGRAM_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_llmgram").to_owned());
    let wrapper = std::env::var("LLMGRAM_BENCH_WRAPPER").unwrap_or_default();
    let mut wrapper = wrapper.split_whitespace();
    let mut command = match wrapper.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(wrapper).arg(&binary);
            command
        }
        None => Command::new(&binary),
    };
    // Only the variables below configure the bot, whatever the shell has.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LLMGRAM_") {
            command.env_remove(name);
        }
    }
    command
        .env_remove("RUST_LOG")
        .env("TELEGRAM_BOT_TOKEN", "123456:bench")
        .env("LLM_API_KEY", "bench")
        .env("OPS_API_TOKEN", BENCH_OPS_TOKEN)
        .env("LLMGRAM_TELEGRAM__API_URL", telegram.api_url())
        .env("LLMGRAM_LLM__BASE_URL", llm.base_url())
        .env("LLMGRAM_STORAGE__PATH", storage)
        .env(
            "LLMGRAM_LLM__MAX_CONCURRENCY",
            options.llm_concurrency.to_string(),
        )
        .env("LLMGRAM_LOG__LEVEL", "warn")
        .env("LLMGRAM_OPS__LISTEN", ops_addr.to_string())
        // The benchmark is one user per chat sending as fast as it is
        // answered: raise the protective limits by config (never by code).
        // Telegram's flood limits are the real API's; the fake has none.
        .envs(
            [
                ("LLMGRAM_LIMITS__USER_MESSAGES_PER_MINUTE", "1000000"),
                ("LLMGRAM_LIMITS__USER_LLM_PER_MINUTE", "1000000"),
                ("LLMGRAM_LIMITS__GLOBAL_LLM_PER_SECOND", "1000000"),
                ("LLMGRAM_LIMITS__NEW_CHATS_PER_MINUTE", "1000000"),
                ("LLMGRAM_TELEGRAM__PER_CHAT_RATE", "1000000"),
                ("LLMGRAM_TELEGRAM__PER_CHAT_BURST", "1000000"),
                ("LLMGRAM_TELEGRAM__GLOBAL_RATE", "1000000"),
            ]
            .iter()
            .copied(),
        )
        // Panics every 100 ms exceed any sane restart budget (5 in 60 s by
        // default); chaos mode lifts it so the service rides them out.
        .envs(
            options
                .chaos_every
                .map(|_| ("LLMGRAM_SUPERVISION__MAX_RESTARTS", "1000000")),
        )
        .envs(options.extra_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("cannot spawn the llmgram binary")
}

/// Waits until the bot has called `getUpdates` once, failing if it exits or
/// takes longer than [`STARTUP_LIMIT`].
async fn wait_for_polling(
    telegram: &FakeTelegram,
    child: &mut Child,
    calls_before: usize,
) -> Result<(), String> {
    let limit = Instant::now() + STARTUP_LIMIT;
    loop {
        if telegram.method_calls("getUpdates") > calls_before {
            return Ok(());
        }
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("cannot check the bot process: {e}"))?
        {
            return Err(format!("the bot exited before polling ({status})"));
        }
        if Instant::now() >= limit {
            return Err(format!(
                "the bot did not call getUpdates within {} s",
                STARTUP_LIMIT.as_secs()
            ));
        }
        // Fine-grained: the start-up time is read from this loop.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What every chat's closed loop does.
#[derive(Debug, Clone, Copy)]
struct ChatPlan {
    /// Messages to send.
    messages: u32,
    /// Pause between a reply and the next message.
    think: Duration,
    /// Whether a reply quoting no message is taken as a fallback answer
    /// (chaos mode) rather than a violation.
    accept_fallback: bool,
    /// Media mode: send photos of this many bytes.
    photo_bytes: Option<usize>,
}

/// One chat's closed loop: push message `k`, wait for its reply, repeat.
async fn run_chat(
    telegram: FakeTelegram,
    chat_id: i64,
    plan: ChatPlan,
    start_after: Duration,
    mut inbox: UnboundedReceiver<SentMessage>,
    deadline: tokio::time::Instant,
) -> ChatOutcome {
    let ChatPlan {
        messages,
        think,
        accept_fallback,
        photo_bytes,
    } = plan;
    let mut outcome = ChatOutcome {
        answered: Vec::with_capacity(messages as usize),
        ..ChatOutcome::default()
    };
    if !start_after.is_zero() {
        tokio::time::sleep(start_after).await;
    }
    for k in 1..=messages {
        if k > 1 && !think.is_zero() {
            tokio::time::sleep(think).await;
        }
        let marker = format!("c{chat_id}-m{k}");
        let pushed_at = Instant::now();
        let update_id = push_message(&telegram, chat_id, &marker, photo_bytes);
        loop {
            let Ok(Some(reply)) = tokio::time::timeout_at(deadline, inbox.recv()).await else {
                outcome.missing += (messages - k + 1) as usize;
                return outcome;
            };
            let answer = carries_marker(&reply.text, &marker);
            // Under chaos a reply that quotes no message of this chat is a
            // fallback text answering the one message in flight.
            let fallback =
                !answer && accept_fallback && !reply.text.contains(&format!("c{chat_id}-m"));
            if answer || fallback {
                outcome.answered.push(Answered {
                    round: k,
                    marker,
                    update_id,
                    pushed_at,
                    replied_at: reply.at,
                    fallback,
                });
                break;
            }
            // Wall-clock time, to find the moment in the bot's log.
            outcome.violations.push(format!(
                "chat {chat_id}: waiting for {marker:?}, got message {} {:?} at {}",
                reply.message_id,
                reply.text,
                wall_clock()
            ));
        }
    }
    outcome
}

/// Width and height written in the media mode's photos: a phone photo as
/// Telegram serves its largest size (1280 px on the long side).
const PHOTO_SIZE: (u16, u16) = (1280, 960);

/// Pushes the message `marker` of chat `chat_id` (sent by user `chat_id`):
/// its text or, in media mode (`photo_bytes`), a photo of that many bytes
/// captioned with it. Each photo is a file of its own (registered at
/// `photos/<marker>.jpg`, one size only), as every photo a user sends is.
/// Returns the update id.
fn push_message(
    telegram: &FakeTelegram,
    chat_id: i64,
    marker: &str,
    photo_bytes: Option<usize>,
) -> i64 {
    let user_id = chat_id.unsigned_abs();
    let Some(bytes) = photo_bytes else {
        return telegram.push_text(chat_id, user_id, marker);
    };
    let (width, height) = PHOTO_SIZE;
    let file_id = telegram.add_file(jpeg(width, height, bytes), &format!("photos/{marker}.jpg"));
    telegram.push_media(MediaUpdate::photo(chat_id, user_id, &[&file_id]).caption(marker))
}

/// The first marker `c{chat}-m{k}` in `text` (an LLM request's user turn
/// may wrap the caption of a photo in more text).
fn marker_of(text: &str) -> Option<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find(|token| {
            token
                .strip_prefix('c')
                .and_then(|rest| rest.split_once("-m"))
                .is_some_and(|(chat, k)| {
                    [chat, k]
                        .iter()
                        .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
        })
}

/// Whether `text` contains `marker` as a whole token (`c1-m1` does not match
/// inside `c1-m10` or `c11-m1`).
fn carries_marker(text: &str, marker: &str) -> bool {
    text.match_indices(marker).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + marker.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// Milliseconds from `from` to `to` (0 if `to` is earlier).
fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}

/// Nearest-rank percentiles of a sample, in milliseconds (`NaN` if empty).
#[derive(Debug, Clone, Copy)]
struct Percentiles {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Percentiles {
    fn of(mut values: Vec<f64>) -> Percentiles {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if values.is_empty() {
                return f64::NAN;
            }
            let rank = (q * values.len() as f64).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1]
        };
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50={:.2} p99={:.2} p99.9={:.2} max={:.2}",
            self.p50, self.p99, self.p999, self.max
        )
    }
}

/// Clock ticks per second of `/proc` CPU times (`getconf CLK_TCK`; 100 on
/// every common Linux build).
const TICKS_PER_SECOND: f64 = 100.0;

/// Cumulative CPU seconds (user + system) of the bot, of this process (the
/// load generator and both fakes) and of the whole machine.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    bot: Option<f64>,
    own: Option<f64>,
    machine: Option<f64>,
}

impl CpuSample {
    fn take(bot_pid: u32) -> CpuSample {
        CpuSample {
            bot: process_cpu(&format!("/proc/{bot_pid}/stat")),
            own: process_cpu("/proc/self/stat"),
            machine: machine_cpu(),
        }
    }

    /// Describes the CPU used since `earlier` over `wall_secs` seconds; the
    /// rest of the machine's use is other processes (a concurrent build
    /// makes the run's figures unreliable).
    fn since(&self, earlier: &CpuSample, wall_secs: f64) -> String {
        let delta = |now: Option<f64>, then: Option<f64>| Some(now? - then?);
        let share =
            |secs: f64| format!("{secs:.2} s ({:.0}% of one core)", secs / wall_secs * 100.0);
        let bot = delta(self.bot, earlier.bot);
        let own = delta(self.own, earlier.own);
        let machine = delta(self.machine, earlier.machine);
        let mut line = String::from("cpu during run:");
        if let Some(bot) = bot {
            let _ = write!(line, " bot {}", share(bot));
        }
        if let Some(own) = own {
            let _ = write!(line, ", benchmark + fakes {}", share(own));
        }
        if let (Some(machine), Some(bot), Some(own)) = (machine, bot, own) {
            let _ = write!(
                line,
                ", other processes {}",
                share((machine - bot - own).max(0.0))
            );
        }
        line
    }
}

/// User + system CPU seconds from a `/proc/<pid>/stat` file.
fn process_cpu(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the command name (which may contain spaces) start with
    // field 3 (state); utime and stime are fields 14 and 15.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Busy CPU seconds of all cores (everything but idle and iowait) from
/// `/proc/stat`.
fn machine_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let total = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = total
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice],
    // guests being already counted in user and nice.
    let busy: f64 = ticks.iter().take(8).sum::<f64>() - ticks.get(3)? - ticks.get(4)?;
    Some(busy / TICKS_PER_SECOND)
}

/// The port of a `http://127.0.0.1:PORT/...` URL.
fn port_of(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://127.0.0.1:")?;
    rest.split('/').next()?.parse().ok()
}

/// Number of TCP connections to `127.0.0.1:port` that `/proc/net/tcp` still
/// knows of, once the bot has exited: every client socket (open or in
/// TIME_WAIT) plus the server side in TIME_WAIT of connections the server
/// closed first. TIME_WAIT lasts 60 s on Linux, so a longer run undercounts.
fn connections_to(port: u16) -> Option<usize> {
    const TIME_WAIT: &str = "06";
    const LISTEN: &str = "0A";
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port_hex = format!(":{port:04X}");
    let count = table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let (Some(local), Some(remote), Some(state)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return false;
            };
            (remote.ends_with(&port_hex) && state != LISTEN)
                || (local.ends_with(&port_hex) && state == TIME_WAIT)
        })
        .count();
    Some(count)
}

/// What RSS is made of: anonymous memory (heap, stacks), pages of mapped
/// files (the binary's code and data, shared libraries) and the threads.
fn memory_split(pid: u32) -> String {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return "unknown".to_owned();
    };
    ["RssAnon:", "RssFile:", "Threads:"]
        .iter()
        .filter_map(|name| {
            let line = status.lines().find(|line| line.starts_with(name))?;
            Some(line.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `VmHWM` and `VmRSS` of process `pid` in KiB, if readable.
fn read_memory(pid: u32) -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn show_kib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "unknown".to_owned(),
        |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
    )
}

/// How the bot process ended.
#[derive(Debug)]
enum Exit {
    /// It exited by itself after SIGTERM.
    Exited(ExitStatus),
    /// It was still running after [`SHUTDOWN_LIMIT`] and was killed.
    Killed,
    /// Signalling or waiting failed.
    Unknown(String),
}

fn show_exit(exit: &Exit) -> String {
    match exit {
        Exit::Exited(status) => match status.code() {
            Some(code) => code.to_string(),
            None => format!("{status}"),
        },
        Exit::Killed => format!("killed (no exit within {} s)", SHUTDOWN_LIMIT.as_secs()),
        Exit::Unknown(why) => format!("unknown ({why})"),
    }
}

/// Sends SIGTERM, waits up to [`SHUTDOWN_LIMIT`], kills the bot if needed.
async fn stop_bot(child: &mut Child) -> Exit {
    let signalled = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    if let Err(e) = signalled {
        let _ = child.kill();
        let _ = child.wait();
        return Exit::Unknown(format!("cannot run kill: {e}"));
    }
    let limit = Instant::now() + SHUTDOWN_LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Exit::Exited(status),
            Ok(None) if Instant::now() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Exit::Killed;
            }
            Ok(None) => tokio::time::sleep(CHILD_POLL / 5).await,
            Err(e) => return Exit::Unknown(e.to_string()),
        }
    }
}

/// Prints the number of lines the bot logged (warnings and errors only) and
/// the first few; returns the count.
fn report_log(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    println!("bot log: {} line(s) at level warn or above", lines.len());
    for line in lines.iter().take(SHOW_MAX) {
        println!("  | {line}");
    }
    lines.len()
}

/// Prints the bot's stderr after a failed start or run.
fn dump_log(path: &Path) {
    eprintln!("bot stderr ({}):", path.display());
    match std::fs::read_to_string(path) {
        Ok(text) => {
            for line in text.lines().rev().take(50).collect::<Vec<_>>().iter().rev() {
                eprintln!("  | {line}");
            }
        }
        Err(e) => eprintln!("  (cannot read it: {e})"),
    }
}

/// How long the bot idles after its first poll before the memory baseline
/// is read (start-up allocations settle).
const BASELINE_SETTLE: Duration = Duration::from_secs(2);
/// How often the memory mode samples RSS and the live sessions while idle.
const IDLE_SAMPLE: Duration = Duration::from_millis(500);
/// How long the memory mode keeps sampling once every session is evicted.
const EVICTED_SETTLE: Duration = Duration::from_secs(5);

/// A loopback address with a port that was free a moment ago, for the bot's
/// ops listener (the benchmark needs to know it; `:0` would hide it).
fn free_loopback_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

/// The ops API token the benchmark gives the bot: `/chaos/panic` needs it.
const BENCH_OPS_TOKEN: &str = "bench-ops-token";

/// The bot's ops listener: `/metrics` and, in chaos mode, `/chaos/panic`.
#[derive(Clone)]
struct Ops {
    base: String,
    http: reqwest::Client,
}

impl Ops {
    fn new(addr: SocketAddr) -> Ops {
        Ops {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("cannot build an HTTP client"),
        }
    }

    /// The `llmgram_sessions_active` gauge, if the bot answers.
    async fn sessions_active(&self) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("llmgram_sessions_active "))
            .and_then(|value| value.trim().parse().ok())
            // The gauge appears with the first session.
            .or(Some(0.0))
    }

    /// Orders a panic every `every`, rotating over every long-lived actor
    /// and a session of a pseudo-random chat among `1..=chats`, until the
    /// task is aborted.
    fn start_chaos(
        &self,
        every: Duration,
        chats: u32,
        only: &[String],
    ) -> (Arc<ChaosTally>, JoinHandle<()>) {
        let tally = Arc::new(ChaosTally::default());
        let victims: Vec<usize> = (0..CHAOS_VICTIMS.len())
            .filter(|&i| only.is_empty() || only.iter().any(|o| o == CHAOS_VICTIMS[i]))
            .collect();
        let task = {
            let ops = self.clone();
            let tally = Arc::clone(&tally);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                let mut random: u64 = 0x5eed;
                for turn in 0usize.. {
                    tick.tick().await;
                    let index = victims[turn % victims.len()];
                    let victim = CHAOS_VICTIMS[index];
                    let query = if victim == "session" {
                        random = random
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        let chat = (random >> 33) % u64::from(chats) + 1;
                        format!("actor=session&chat={chat}")
                    } else {
                        format!("actor={victim}")
                    };
                    let answer = ops
                        .http
                        .post(format!("{}/chaos/panic?{query}", ops.base))
                        .bearer_auth(BENCH_OPS_TOKEN)
                        .send()
                        .await;
                    let slot = match answer.map(|a| a.status().as_u16()) {
                        Ok(200) => &tally.ordered[index],
                        Ok(409) => &tally.refused,
                        _ => &tally.failed,
                    };
                    slot.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        (tally, task)
    }
}

/// Who the chaos mode makes panic, in turn (`session`: a random chat's).
const CHAOS_VICTIMS: [&str; 8] = [
    "persistence",
    "breaker.0",
    "limiter",
    "llm_pool",
    "outbox",
    "session_sup",
    "ingress",
    "session",
];

/// What the chaos task did.
#[derive(Debug, Default)]
struct ChaosTally {
    /// Panics ordered, per victim (index into [`CHAOS_VICTIMS`]).
    ordered: [AtomicUsize; CHAOS_VICTIMS.len()],
    /// The victim was not running (still being restarted).
    refused: AtomicUsize,
    /// The ops listener did not answer as expected (a build without the
    /// `chaos` feature answers 404).
    failed: AtomicUsize,
}

impl ChaosTally {
    fn ordered(&self) -> usize {
        self.ordered.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

impl std::fmt::Display for ChaosTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chaos: {} panics ordered (", self.ordered())?;
        for (index, victim) in CHAOS_VICTIMS.iter().enumerate() {
            let sep = if index == 0 { "" } else { " " };
            write!(
                f,
                "{sep}{victim}={}",
                self.ordered[index].load(Ordering::Relaxed)
            )?;
        }
        write!(
            f,
            "), {} refused (victim still restarting), {} failed requests",
            self.refused.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        )
    }
}

/// What the LLM requests carried in the way of images (media mode).
#[derive(Debug, Default)]
struct ImageTally {
    requests: usize,
    /// Requests with at least one image part.
    with_image: usize,
    without_image: usize,
    /// Image parts over all requests.
    images: usize,
    /// Image parts that were not `data:image/jpeg;base64,` URLs (a file
    /// download URL there would carry the bot token to the provider).
    not_data_urls: usize,
}

impl ImageTally {
    fn of(requests: &[LlmRequest]) -> ImageTally {
        let mut tally = ImageTally {
            requests: requests.len(),
            ..ImageTally::default()
        };
        for request in requests {
            if request.image_count() > 0 {
                tally.with_image += 1;
            } else {
                tally.without_image += 1;
            }
            tally.images += request.image_count();
            tally.not_data_urls += request
                .images
                .iter()
                .filter(|url| !url.starts_with("data:image/jpeg;base64,"))
                .count();
        }
        tally
    }
}

/// How often the media mode samples the bot's RSS during the run.
const RSS_SAMPLE: Duration = Duration::from_millis(100);
/// Most RSS samples printed one by one.
const RSS_SAMPLES_SHOWN: usize = 12;

/// Samples the bot's `VmRSS` every [`RSS_SAMPLE`] until stopped.
struct RssSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<Vec<(f64, u64)>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(RSS_SAMPLE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        if let (_, Some(rss)) = read_memory(pid) {
                            samples.push((started.elapsed().as_secs_f64(), rss));
                        }
                    }
                }
            }
            samples
        });
        RssSampler { stop, task }
    }

    /// `(seconds since the start, VmRSS KiB)` of every sample.
    async fn stop(self) -> Vec<(f64, u64)> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// The media mode's figures.
struct MediaReport<'a> {
    photo_bytes: usize,
    photos: usize,
    llm: &'a ImageTally,
    downloads: usize,
    get_file: usize,
    /// `VmHWM` at the end, KiB.
    peak: Option<u64>,
    /// `(seconds into the run, VmRSS KiB)`.
    samples: &'a [(f64, u64)],
    /// `media.max_concurrent_downloads` as set, or `default`.
    download_concurrency: &'a str,
}

impl std::fmt::Display for MediaReport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (width, height) = PHOTO_SIZE;
        writeln!(
            f,
            "media: {} photos of {} bytes ({width}x{height} JPEG headers, one file each), \
             media.max_concurrent_downloads={}",
            self.photos, self.photo_bytes, self.download_concurrency
        )?;
        writeln!(
            f,
            "media: getFile={} downloads={}; LLM requests={} with an image={} without={} \
             images={} not data URLs={}",
            self.get_file,
            self.downloads,
            self.llm.requests,
            self.llm.with_image,
            self.llm.without_image,
            self.llm.images,
            self.llm.not_data_urls
        )?;
        let sampled_max = self.samples.iter().map(|s| s.1).max();
        write!(
            f,
            "media: bot peak RSS (VmHWM) {}; RSS sampled every {} ms during the run: \
             {} samples, max {}",
            show_kib(self.peak),
            RSS_SAMPLE.as_millis(),
            self.samples.len(),
            show_kib(sampled_max)
        )?;
        let step = self.samples.len().div_ceil(RSS_SAMPLES_SHOWN).max(1);
        for (at, rss) in self.samples.iter().step_by(step) {
            write!(f, "\n  t+{at:>5.1} s rss={}", show_kib(Some(*rss)))?;
        }
        let mib = |kib: Option<u64>| kib.map_or(f64::NAN, |k| k as f64 / 1024.0);
        write!(
            f,
            "\nsummary-media photo_bytes={} photos={} downloads={} llm_images={} \
             peak_rss_mib={:.1} sampled_max_rss_mib={:.1} max_concurrent_downloads={}",
            self.photo_bytes,
            self.photos,
            self.downloads,
            self.llm.images,
            mib(self.peak),
            mib(sampled_max),
            self.download_concurrency
        )
    }
}

/// The memory mode's figures, in KiB.
struct MemoryReport {
    baseline: Option<u64>,
    /// Live sessions and RSS right after the last reply.
    live_sessions: Option<f64>,
    live_rss: Option<u64>,
    peak: Option<u64>,
    /// Seconds after the last reply until no session was live (`None`: the
    /// limit passed first).
    evicted_after: Option<f64>,
    /// RSS [`EVICTED_SETTLE`] after the last session was evicted (or at the
    /// limit).
    after_rss: Option<u64>,
    /// `(seconds after the run, sessions, RSS)` while idle.
    samples: Vec<(f64, Option<f64>, Option<u64>)>,
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |kib: Option<u64>| show_kib(kib);
        writeln!(f, "memory: idle baseline RSS {}", mib(self.baseline))?;
        writeln!(f, "memory: peak RSS (VmHWM) {}", mib(self.peak))?;
        writeln!(
            f,
            "memory: after the last reply {} live sessions, RSS {}",
            self.live_sessions
                .map_or("unknown".into(), |n| format!("{n:.0}")),
            mib(self.live_rss)
        )?;
        if let (Some(base), Some(live), Some(n)) =
            (self.baseline, self.live_rss, self.live_sessions)
            && n > 0.0
        {
            writeln!(
                f,
                "memory: RSS per live session {:.2} KiB ((RSS - baseline) / sessions)",
                live.saturating_sub(base) as f64 / n
            )?;
        }
        match self.evicted_after {
            Some(secs) => writeln!(f, "memory: every session evicted {secs:.1} s after the run")?,
            None => writeln!(
                f,
                "memory: NOT every session was evicted within the idle limit"
            )?,
        }
        write!(
            f,
            "memory: RSS after eviction {} ({} above the baseline)",
            mib(self.after_rss),
            match (self.after_rss, self.baseline) {
                (Some(after), Some(base)) =>
                    format!("{:+.1} MiB", (after as f64 - base as f64) / 1024.0),
                _ => "unknown".into(),
            }
        )?;
        for (at, sessions, rss) in self.samples.iter().step_by(10) {
            write!(
                f,
                "\n  t+{at:>5.1} s sessions={} rss={}",
                sessions.map_or("?".into(), |n| format!("{n:.0}")),
                mib(*rss)
            )?;
        }
        writeln!(
            f,
            "\nsummary-memory baseline_mib={:.1} peak_mib={:.1} live_sessions={:.0} live_mib={:.1} \
             per_session_kib={:.2} evicted_after_s={:.1} after_eviction_mib={:.1}",
            self.baseline.map_or(f64::NAN, |k| k as f64 / 1024.0),
            self.peak.map_or(f64::NAN, |k| k as f64 / 1024.0),
            self.live_sessions.unwrap_or(f64::NAN),
            self.live_rss.map_or(f64::NAN, |k| k as f64 / 1024.0),
            match (self.baseline, self.live_rss, self.live_sessions) {
                (Some(b), Some(l), Some(n)) if n > 0.0 => l.saturating_sub(b) as f64 / n,
                _ => f64::NAN,
            },
            self.evicted_after.unwrap_or(f64::NAN),
            self.after_rss.map_or(f64::NAN, |k| k as f64 / 1024.0),
        )
    }
}

/// After the run: RSS with every session live, then idle until every
/// session is evicted (or `limit` passes), then [`EVICTED_SETTLE`] more.
async fn idle_phase(ops: &Ops, pid: u32, baseline: Option<u64>, limit: Duration) -> MemoryReport {
    let live_sessions = ops.sessions_active().await;
    let (peak, live_rss) = read_memory(pid);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut evicted_after = None;
    let mut settle_until = None;
    loop {
        tokio::time::sleep(IDLE_SAMPLE).await;
        let sessions = ops.sessions_active().await;
        let rss = read_memory(pid).1;
        let at = started.elapsed();
        samples.push((at.as_secs_f64(), sessions, rss));
        if evicted_after.is_none() && sessions.is_some_and(|n| n < 0.5) {
            evicted_after = Some(at.as_secs_f64());
            settle_until = Some(at + EVICTED_SETTLE);
        }
        if settle_until.is_some_and(|until| at >= until) || at >= limit {
            break;
        }
    }
    println!("memory: after eviction split {}", memory_split(pid));
    MemoryReport {
        baseline,
        live_sessions,
        live_rss,
        peak,
        evicted_after,
        after_rss: samples.last().and_then(|s| s.2),
        samples,
    }
}

/// Start-up mode: starts the bot `runs` times on a fresh store each and
/// reports spawn → first `getUpdates`, then stops it.
async fn startup_series(options: &Options, runs: u32) -> ExitCode {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let mut times = Vec::new();
    let mut failed = false;
    for run in 1..=runs {
        let log_path = dir.path().join(format!("llmgram-{run}.stderr.log"));
        let before = telegram.method_calls("getUpdates");
        let spawned_at = Instant::now();
        let mut child = spawn_bot(
            options,
            &telegram,
            &llm,
            &dir.path().join(format!("storage-{run}")),
            &log_path,
            free_loopback_addr(),
        );
        if let Err(why) = wait_for_polling(&telegram, &mut child, before).await {
            eprintln!("load: {why}");
            let _ = child.kill();
            let _ = child.wait();
            dump_log(&log_path);
            failed = true;
            break;
        }
        let took = spawned_at.elapsed().as_secs_f64() * 1e3;
        let exit = stop_bot(&mut child).await;
        println!(
            "start {run}: first getUpdates after {took:.1} ms, exit {}",
            show_exit(&exit)
        );
        failed |= !matches!(&exit, Exit::Exited(status) if status.success());
        times.push(took);
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "summary startups={} startup_median_ms={median:.1} min_ms={:.1} max_ms={:.1}",
        times.len(),
        times.first().copied().unwrap_or(f64::NAN),
        times.last().copied().unwrap_or(f64::NAN),
    );
    if failed {
        let _ = dir.keep();
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// One message of the open-loop schedule, as pushed.
struct Pushed {
    chat_id: i64,
    round: u32,
    marker: String,
    update_id: i64,
    pushed_at: Instant,
}

/// Open-loop mode: pushes `rate` messages a second for `options.duration`
/// on a fixed schedule, whatever the replies do; message `i` goes to chat
/// `i mod U + 1` (so each chat sends every `U / rate` seconds). Then waits
/// for the replies and checks them as the closed loop does.
async fn run_open_loop(
    options: &Options,
    rate: u32,
    telegram: &FakeTelegram,
    child: &mut Child,
) -> Result<Run, ExitStatus> {
    let total = options.total();
    let chats = options.chats as usize;
    let mut sent = telegram.subscribe_sent();
    let pid = child.id();
    let cpu_before = CpuSample::take(pid);
    let started = Instant::now();
    let photo_bytes = options.photo_bytes;
    let pusher = {
        let telegram = telegram.clone();
        tokio::spawn(async move {
            let t0 = tokio::time::Instant::now();
            let mut pushed = Vec::with_capacity(total);
            let mut late = Duration::ZERO;
            for i in 0..total {
                let due = t0 + Duration::from_nanos(i as u64 * 1_000_000_000 / u64::from(rate));
                tokio::time::sleep_until(due).await;
                late = late.max(due.elapsed());
                let chat_id = i64::try_from(i % chats + 1).expect("chat ids fit in i64");
                let round = u32::try_from(i / chats + 1).expect("rounds fit in u32");
                let marker = format!("c{chat_id}-m{round}");
                let pushed_at = Instant::now();
                let update_id = push_message(&telegram, chat_id, &marker, photo_bytes);
                pushed.push(Pushed {
                    chat_id,
                    round,
                    marker,
                    update_id,
                    pushed_at,
                });
            }
            (pushed, late)
        })
    };

    let deadline = tokio::time::Instant::from_std(started + options.duration + options.timeout);
    let mut replies: Vec<SentMessage> = Vec::with_capacity(total);
    let mut check_child = tokio::time::interval(CHILD_POLL * 4);
    check_child.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while replies.len() < total {
        tokio::select! {
            message = sent.recv() => match message {
                Some(message) => replies.push(message),
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => break,
            _ = check_child.tick() => {
                if let Ok(Some(status)) = child.try_wait() {
                    pusher.abort();
                    return Err(status);
                }
            }
        }
    }
    let ended = Instant::now();
    let cpu_after = CpuSample::take(pid);
    // Late duplicates.
    let settle = tokio::time::Instant::now() + SETTLE;
    while let Ok(Some(message)) = tokio::time::timeout_at(settle, sent.recv()).await {
        replies.push(message);
    }
    let (pushed, late) = pusher.await.expect("the pusher panicked");
    println!(
        "open loop: {} messages pushed at {rate}/s over {} s, at most {:.2} ms behind schedule",
        pushed.len(),
        options.duration.as_secs(),
        late.as_secs_f64() * 1e3
    );

    // Per chat: replies in arrival order must answer its messages in order.
    let mut outcomes: Vec<ChatOutcome> = (0..chats).map(|_| ChatOutcome::default()).collect();
    let mut by_chat: Vec<Vec<&Pushed>> = (0..chats).map(|_| Vec::new()).collect();
    for p in &pushed {
        by_chat[usize::try_from(p.chat_id - 1).expect("positive chat id")].push(p);
    }
    let mut next = vec![0usize; chats];
    let mut strays = 0;
    for reply in replies {
        let Some(index) = usize::try_from(reply.chat_id - 1)
            .ok()
            .filter(|i| *i < chats)
        else {
            strays += 1;
            continue;
        };
        let expected = by_chat[index].get(next[index]);
        match expected {
            Some(p) if carries_marker(&reply.text, &p.marker) => {
                outcomes[index].answered.push(Answered {
                    round: p.round,
                    marker: p.marker.clone(),
                    update_id: p.update_id,
                    pushed_at: p.pushed_at,
                    replied_at: reply.at,
                    fallback: false,
                });
                next[index] += 1;
            }
            _ => outcomes[index].violations.push(format!(
                "chat {}: expected {:?}, got message {} {:?}",
                reply.chat_id,
                expected.map(|p| p.marker.as_str()),
                reply.message_id,
                reply.text
            )),
        }
    }
    for (index, outcome) in outcomes.iter_mut().enumerate() {
        outcome.missing = by_chat[index].len() - next[index];
    }
    Ok(Run {
        outcomes,
        strays,
        started,
        ended,
        cpu_before,
        cpu_after,
    })
}

/// Now as `HH:MM:SS.mmm` UTC, the format of the bot's log timestamps.
fn wall_clock() -> String {
    wall_clock_of(Instant::now())
}

/// `at` as `HH:MM:SS.mmm` UTC.
fn wall_clock_of(at: Instant) -> String {
    let now = (std::time::SystemTime::now() - Instant::now().saturating_duration_since(at))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_millis()
    )
}

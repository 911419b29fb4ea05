//! A real HAProxy on loopback, running the routing rules of
//! `deploy/haproxy.cfg`, for tests of several llmgram instances.
//!
//! The shipped file is compiled in ([`SHIPPED_CONFIG`]) and only the parts
//! that cannot run in a test are replaced, so a test exercises the rules an
//! operator deploys, not a copy that can drift:
//!
//! * `global` keeps only the `tune.*` lines (no chroot, user, daemon,
//!   syslog, stats socket or TLS defaults), with `maxconn 256`: haproxy
//!   refuses to start when it cannot get two descriptors per connection,
//!   and a non-root user's `ulimit -n` is often 1024;
//! * `defaults` is kept whole;
//! * `frontend telegram` keeps every rule; its `bind` lines become one plain
//!   HTTP `bind` on `127.0.0.1` and a free port (no TLS), and the networks of
//!   `acl from_telegram` become `127.0.0.0/8`;
//! * `backend llmgram` keeps every rule; its `server` lines become one per
//!   backend given to [`TempHaproxy::start`], with `check port` on the
//!   backend's ops port and fast health checks (every 200 ms, down after 2
//!   failures, up after 2 successes);
//! * other sections (the stats page) are dropped.
//!
//! A shipped file without those two sections, the ACL or a `bind` line is
//! refused ([`render`] fails), so renaming them breaks the tests instead of
//! silently testing less.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// `deploy/haproxy.cfg` as shipped.
pub const SHIPPED_CONFIG: &str = include_str!("../../../deploy/haproxy.cfg");

/// The frontend Telegram posts to.
const FRONTEND: &str = "frontend telegram";
/// The backend of llmgram instances.
const BACKEND: &str = "backend llmgram";
/// The ACL naming Telegram's networks.
const TELEGRAM_ACL: &str = "acl from_telegram src";

/// Health-check timings for tests, appended to each `server` line (they
/// override the shipped `default-server` values).
const TEST_CHECKS: &str = "inter 200ms fastinter 100ms downinter 200ms fall 2 rise 2";

/// How long a started haproxy may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts at starting, each on a fresh port, when another process took
/// the port between choosing it and haproxy binding it.
const START_ATTEMPTS: u32 = 5;

/// A running `haproxy` process listening on `127.0.0.1`, stopped (SIGKILL)
/// and its temporary directory removed on drop.
#[derive(Debug)]
pub struct TempHaproxy {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl TempHaproxy {
    /// Starts haproxy in front of `backends`, each a pair of the instance's
    /// webhook address and its ops address (whose `/readyz` is the health
    /// check), with the rules of `deploy/haproxy.cfg`.
    ///
    /// Returns once haproxy accepts connections. Fails if the binary is
    /// missing ([`available`]), the configuration cannot be rendered or is
    /// refused (the error carries haproxy's output), or no port could be
    /// bound after a few attempts.
    pub fn start(backends: &[(SocketAddr, SocketAddr)]) -> io::Result<TempHaproxy> {
        if backends.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "haproxy needs at least one backend",
            ));
        }
        let dir = temp_dir()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match start_once(&dir, backends) {
                Ok((child, addr)) => return Ok(TempHaproxy { child, addr, dir }),
                Err(Start::Retry(error)) => last_error = Some(error),
                Err(Start::Fail(error)) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(error);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last_error.unwrap_or_else(|| io::Error::other("haproxy did not start")))
    }

    /// Where haproxy listens (plain HTTP): post updates here.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TempHaproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a `haproxy` binary can be run (`haproxy -v` succeeds). Tests
/// needing it skip, saying so, when it cannot.
pub fn available() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The shipped configuration rewritten to listen on `listen` (plain HTTP)
/// and balance over `backends` (webhook, ops) with fast health checks; see
/// the module documentation for what is replaced.
pub fn render(
    shipped: &str,
    listen: SocketAddr,
    backends: &[(SocketAddr, SocketAddr)],
) -> Result<String, String> {
    let mut out = String::new();
    let (mut saw_frontend, mut saw_backend, mut saw_bind, mut saw_acl) =
        (false, false, false, false);
    for (header, body) in sections(shipped) {
        match header.trim_end() {
            "global" => {
                out.push_str("global\n    maxconn 256\n");
                for line in body {
                    if first_word(line).starts_with("tune.") {
                        push_line(&mut out, line);
                    }
                }
            }
            "defaults" => {
                out.push_str("defaults\n");
                body.iter().for_each(|line| push_line(&mut out, line));
            }
            FRONTEND => {
                saw_frontend = true;
                push_line(&mut out, header);
                push_line(&mut out, &format!("    bind {listen}"));
                for line in body {
                    if first_word(line) == "bind" {
                        saw_bind = true;
                    } else if line.trim_start().starts_with(TELEGRAM_ACL) {
                        saw_acl = true;
                        push_line(&mut out, &format!("    {TELEGRAM_ACL} 127.0.0.0/8"));
                    } else {
                        push_line(&mut out, line);
                    }
                }
            }
            BACKEND => {
                saw_backend = true;
                push_line(&mut out, header);
                body.iter()
                    .filter(|line| !matches!(first_word(line), "server" | "server-template"))
                    .for_each(|line| push_line(&mut out, line));
                for (i, (webhook, ops)) in backends.iter().enumerate() {
                    let mut server = format!(
                        "    server s{i} {webhook} check port {} {TEST_CHECKS}",
                        ops.port()
                    );
                    if ops.ip() != webhook.ip() {
                        server.push_str(&format!(" addr {}", ops.ip()));
                    }
                    push_line(&mut out, &server);
                }
            }
            _ => {}
        }
    }
    let missing = [
        (saw_frontend, FRONTEND),
        (saw_backend, BACKEND),
        (saw_bind, "a bind line in the frontend"),
        (saw_acl, TELEGRAM_ACL),
    ];
    match missing.iter().find(|(seen, _)| !seen) {
        Some((_, what)) => Err(format!("deploy/haproxy.cfg has no `{what}`")),
        None => Ok(out),
    }
}

/// Why one start attempt failed.
enum Start {
    /// The port was taken meanwhile: try another.
    Retry(io::Error),
    /// Anything else: give up.
    Fail(io::Error),
}

/// Renders the configuration on a fresh port, starts haproxy in the
/// foreground and waits until it accepts connections.
fn start_once(
    dir: &Path,
    backends: &[(SocketAddr, SocketAddr)],
) -> Result<(Child, SocketAddr), Start> {
    let addr = free_port().map_err(Start::Fail)?;
    let config = render(SHIPPED_CONFIG, addr, backends)
        .map_err(|e| Start::Fail(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    let config_path = dir.join("haproxy.cfg");
    let log_path = dir.join("haproxy.log");
    std::fs::write(&config_path, config).map_err(Start::Fail)?;
    let log = std::fs::File::create(&log_path).map_err(Start::Fail)?;
    let log_err = log.try_clone().map_err(Start::Fail)?;
    // -db: stay in the foreground, so that the child is haproxy itself and
    // killing it stops everything; -W is not used (no master process).
    let mut child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(Start::Fail)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let output = std::fs::read_to_string(&log_path).unwrap_or_default();
            let error = io::Error::other(format!("haproxy exited ({status}): {output}"));
            return Err(if output.contains("cannot bind socket") {
                Start::Retry(error)
            } else {
                Start::Fail(error)
            });
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok((child, addr));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Start::Fail(io::Error::new(
                io::ErrorKind::TimedOut,
                "haproxy did not accept connections in time",
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port on `127.0.0.1` free at the time of asking.
fn free_port() -> io::Result<SocketAddr> {
    TcpListener::bind(("127.0.0.1", 0))?.local_addr()
}

/// A new, empty directory under the system's temporary directory.
fn temp_dir() -> io::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "llmgram-haproxy-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The sections of a configuration: each header line (unindented) with the
/// lines up to the next one. Lines before the first header (comments) are
/// dropped.
fn sections(config: &str) -> Vec<(&str, Vec<&str>)> {
    let mut sections: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in config.lines() {
        let is_header =
            !line.is_empty() && !line.starts_with(char::is_whitespace) && !line.starts_with('#');
        if is_header {
            sections.push((line, Vec::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push(line);
        }
    }
    sections
}

/// The keyword of a configuration line ("" for a blank line).
fn first_word(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or("")
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn pair(webhook: u16, ops: u16) -> (SocketAddr, SocketAddr) {
        (
            SocketAddr::from(([127, 0, 0, 1], webhook)),
            SocketAddr::from(([127, 0, 0, 1], ops)),
        )
    }

    #[test]
    fn rendering_keeps_the_rules_and_replaces_the_environment() {
        let listen = SocketAddr::from(([127, 0, 0, 1], 18000));
        let config = render(SHIPPED_CONFIG, listen, &[pair(1, 2), pair(3, 4)]).unwrap();
        assert!(config.contains("    bind 127.0.0.1:18000\n"));
        assert!(!config.contains("ssl crt"));
        assert!(!config.contains("chroot"));
        assert!(!config.contains("frontend stats"));
        assert!(config.contains("acl from_telegram src 127.0.0.0/8\n"));
        assert!(config.contains("server s0 127.0.0.1:1 check port 2 inter 200ms"));
        assert!(config.contains("server s1 127.0.0.1:3 check port 4 inter 200ms"));
        assert!(!config.contains("llmgram1"));
        // Every rule of the shipped frontend and backend is there, unchanged.
        let rules: Vec<&str> = sections(SHIPPED_CONFIG)
            .into_iter()
            .filter(|(header, _)| [FRONTEND, BACKEND].contains(header))
            .flat_map(|(_, body)| body)
            .filter(|l| !matches!(first_word(l), "" | "bind" | "server" | "acl"))
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        assert!(rules.len() > 20, "{rules:?}");
        for rule in rules {
            assert!(config.contains(rule), "lost: {rule}");
        }
    }

    #[test]
    fn a_renamed_section_is_refused() {
        let listen = SocketAddr::from(([127, 0, 0, 1], 18000));
        let renamed = SHIPPED_CONFIG.replace(BACKEND, "backend bots");
        assert!(render(&renamed, listen, &[pair(1, 2)]).is_err());
    }
}

//! A PostgreSQL server that can be cut off from some of its clients:
//! [`PartitionablePostgres`].
//!
//! Issue 18's last fault scenario cuts one llmgram instance off from the
//! shared database while the others keep it, as a network partition does:
//! packets are dropped, nothing closes a connection, a new one times out.
//! Stopping the server cannot show that (every client loses it at once, and
//! at once knows), so the server runs in a network namespace of its own and
//! each client reaches it through its own "path", a veth pair whose
//! namespace end can be taken down and brought up again.
//!
//! # Layout
//! The namespace is named `llmg-<pid>-<n>` after the test process that made
//! it. Path `p` is the /30 `10.a.b.4p` of a /24 `10.a.b.0` chosen per
//! server: the host end (`lg<ab>h<p>`) holds `.4p+1`, the namespace end
//! (`lg<ab>n<p>`) `.4p+2`, where PostgreSQL listens besides the namespace's
//! own loopback (which [`psql`](PartitionablePostgres::psql) uses). The /24
//! is derived from the process id and a counter, skipping any that overlaps
//! a route or an address of the host (a cloud network on 10/8, another
//! test's server), and taken by creating its interfaces (whose names it
//! fixes): a concurrent taker fails with "File exists" and moves on.
//!
//! # Cutting a path
//! [`cut`](PartitionablePostgres::cut) takes the namespace end of the pair
//! down: the host end loses its carrier but keeps its route, so what a
//! client sends is dropped by the pair and what the server sends has no
//! route; both ends know each other's link-layer address for good
//! (permanent neighbour entries), so not even a failed address resolution
//! tells a client the path is gone. Established connections stall, new ones
//! time out. [`heal`](PartitionablePostgres::heal) brings it up again.
//!
//! # Requirements and leftovers
//! Root and the `ip` command (iproute2; `.ci/run` installs it);
//! [`available`](PartitionablePostgres::available) probes once per process.
//! Drop heals every path, stops the server, then deletes the paths and the
//! namespace. A namespace left by a test process
//! killed outright is deleted by the next
//! [`start`](PartitionablePostgres::start) (Linux only: it asks `/proc`).

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::TempPostgres;
use crate::postgres::run;

/// Start of every namespace name this module makes.
const NS_PREFIX: &str = "llmg-";

/// At most this many paths per server (a /24 holds 64 /30s).
pub const MAX_PATHS: usize = 64;

/// How many /24s [`PartitionablePostgres::start`] tries.
const BLOCK_ATTEMPTS: u32 = 64;

/// Namespaces made by this process, for their names.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A [`TempPostgres`] in a network namespace of its own, reached from the
/// host over paths that can each be cut and healed (see the module
/// documentation).
///
/// Blocking like [`TempPostgres`] (child processes: `ip`, `pg_ctl`,
/// `psql`): call it from async tests through `spawn_blocking`.
#[derive(Debug)]
pub struct PartitionablePostgres {
    /// The server, run in `net`. Declared first so it is stopped before the
    /// namespace goes.
    db: TempPostgres,
    /// The namespace and its paths.
    net: Namespace,
}

impl PartitionablePostgres {
    /// Whether network namespaces and veth pairs can be made here (root,
    /// `ip` present, a probe namespace works). Probed once per process.
    pub fn available() -> bool {
        Self::unavailable_because().is_none()
    }

    /// Why namespaces cannot be made here, when they cannot (for a test's
    /// skip message).
    pub fn unavailable_because() -> Option<&'static str> {
        static WHY: OnceLock<Option<String>> = OnceLock::new();
        WHY.get_or_init(probe).as_deref()
    }

    /// Makes a namespace with `paths` paths (1 to [`MAX_PATHS`]) and starts
    /// a PostgreSQL cluster in it, listening on each path and on the
    /// namespace's loopback; returns once it accepts connections.
    ///
    /// # Errors
    /// When namespaces are not [`available`](Self::available), no free /24
    /// was found, or the server does not start.
    pub fn start(paths: usize) -> io::Result<Self> {
        if let Some(why) = Self::unavailable_because() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, why));
        }
        if paths == 0 || paths > MAX_PATHS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{paths} paths: 1 to {MAX_PATHS}"),
            ));
        }
        sweep_leftovers();
        let net = Namespace::make(paths)?;
        let listen: Vec<Ipv4Addr> = (0..paths).map(|p| net.server_addr(p)).collect();
        let db = TempPostgres::start_in(Some(&net.name), &listen)?;
        Ok(Self { db, net })
    }

    /// The connection URL over path `path`:
    /// `postgres://llmgram@10.a.b.c:<port>/llmgram`.
    ///
    /// # Panics
    /// When there is no such path.
    pub fn url_via(&self, path: usize) -> String {
        format!(
            "postgres://llmgram@{}:{}/llmgram",
            self.net.server_addr(self.net.check(path)),
            self.db.port()
        )
    }

    /// The server's address on path `path` (the namespace end).
    ///
    /// # Panics
    /// When there is no such path.
    pub fn addr_via(&self, path: usize) -> Ipv4Addr {
        self.net.server_addr(self.net.check(path))
    }

    /// The server's port (the same on every path).
    pub fn port(&self) -> u16 {
        self.db.port()
    }

    /// How many paths there are.
    pub fn paths(&self) -> usize {
        self.net.paths
    }

    /// The namespace's name.
    pub fn namespace(&self) -> &str {
        &self.net.name
    }

    /// Cuts path `path` silently: packets either way are dropped, nothing
    /// closes a connection (see the module documentation). Cutting a cut
    /// path does nothing.
    ///
    /// # Errors
    /// When `ip` fails.
    ///
    /// # Panics
    /// When there is no such path.
    pub fn cut(&self, path: usize) -> io::Result<()> {
        let path = self.net.check(path);
        self.net
            .ip_in(&["link", "set", &self.net.ns_end(path), "down"])
    }

    /// Heals path `path`: its connections carry packets again (those that
    /// outlived the cut), new ones connect.
    ///
    /// # Errors
    /// When `ip` fails.
    ///
    /// # Panics
    /// When there is no such path.
    pub fn heal(&self, path: usize) -> io::Result<()> {
        let path = self.net.check(path);
        self.net
            .ip_in(&["link", "set", &self.net.ns_end(path), "up"])?;
        // Taking the interface down flushed its permanent neighbour entry.
        self.net.pin_neighbour_in(path)
    }

    /// Runs `sql` with `psql` on the namespace's loopback (no path), as
    /// [`TempPostgres::psql`].
    ///
    /// # Errors
    /// As [`TempPostgres::psql`].
    pub fn psql(&self, sql: &str) -> io::Result<String> {
        self.db.psql(sql)
    }

    /// Runs `sql` with `psql` from the host over path `path`, giving up
    /// after `within` (connecting included); its output as
    /// [`TempPostgres::psql`].
    ///
    /// # Errors
    /// When `psql` fails or takes longer than `within` (then killed; the
    /// error's kind is [`io::ErrorKind::TimedOut`]).
    ///
    /// # Panics
    /// When there is no such path.
    pub fn psql_via(&self, path: usize, sql: &str, within: Duration) -> io::Result<String> {
        let seconds = within.as_secs().max(1).to_string();
        let mut cmd = Command::new("psql");
        cmd.env("PGCONNECT_TIMEOUT", seconds)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url_via(path))
            .arg("-c")
            .arg(sql);
        let out = run_within(&mut cmd, within, "psql")?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.ends_with('\n') {
            text.pop();
        }
        Ok(text)
    }

    /// Stops the server (a fast shutdown), as [`TempPostgres::stop`].
    pub fn stop(&mut self) {
        self.db.stop();
    }

    /// Starts the server again in its namespace, as
    /// [`TempPostgres::start_again`].
    ///
    /// # Errors
    /// As [`TempPostgres::start_again`].
    pub fn start_again(&mut self) -> io::Result<()> {
        self.db.start_again()
    }
}

impl Drop for PartitionablePostgres {
    /// Heals every path first, so the server's connections close cleanly
    /// when it stops (a connection closed across a cut path lingers in the
    /// kernel, retrying, and keeps the deleted namespace alive meanwhile);
    /// then the server stops and the namespace goes (the fields' drops).
    fn drop(&mut self) {
        for path in 0..self.net.paths {
            let _ = self.heal(path);
        }
    }
}

/// A network namespace with its paths; deleted when dropped.
#[derive(Debug)]
struct Namespace {
    /// `llmg-<pid>-<n>`.
    name: String,
    /// The /24 `10.a.b.0`, as `a << 8 | b`.
    block: u16,
    /// How many paths.
    paths: usize,
}

impl Namespace {
    /// Makes a namespace and its paths on the first free /24.
    fn make(paths: usize) -> io::Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NS_PREFIX}{}-{n}", std::process::id());
        let taken = taken_networks()?;
        // Spread processes and their servers over 10/8, away from 10.0/16.
        let first = std::process::id()
            .wrapping_mul(2_654_435_761)
            .wrapping_add(n.wrapping_mul(97));
        let mut last = None;
        for attempt in 0..BLOCK_ATTEMPTS {
            let block = (first.wrapping_add(attempt) % 0xff00) as u16 + 0x100;
            let base = u32::from(Ipv4Addr::new(10, (block >> 8) as u8, block as u8, 0));
            if taken.iter().any(|&(net, len)| overlaps(base, 24, net, len)) {
                continue;
            }
            ip(&["netns", "add", &name])?;
            let namespace = Self {
                name: name.clone(),
                block,
                paths,
            };
            match namespace.wire() {
                Ok(()) => return Ok(namespace),
                // Another process or test took this /24 meanwhile (its
                // interfaces have the same names): the next one.
                Err(e) if e.to_string().contains("File exists") => last = Some(e),
                Err(e) => return Err(e),
            }
            // Dropped here: the namespace and what was wired so far go.
        }
        Err(last.unwrap_or_else(|| {
            io::Error::other(format!(
                "no /24 of 10/8 free of the host's routes in {BLOCK_ATTEMPTS} tries"
            ))
        }))
    }

    /// Brings the loopback up and makes every path.
    fn wire(&self) -> io::Result<()> {
        self.ip_in(&["link", "set", "lo", "up"])?;
        for path in 0..self.paths {
            let (host, ns) = (self.host_end(path), self.ns_end(path));
            let (host_mac, ns_mac) = (self.mac(path, 1), self.mac(path, 2));
            ip(&[
                "link", "add", &host, "address", &host_mac, "type", "veth", "peer", "name", &ns,
                "address", &ns_mac, "netns", &self.name,
            ])?;
            ip(&[
                "addr",
                "add",
                &self.cidr(self.host_addr(path)),
                "dev",
                &host,
            ])?;
            ip(&["link", "set", &host, "up"])?;
            self.ip_in(&[
                "addr",
                "add",
                &self.cidr(self.server_addr(path)),
                "dev",
                &ns,
            ])?;
            self.ip_in(&["link", "set", &ns, "up"])?;
            ip(&[
                "neigh",
                "replace",
                &self.server_addr(path).to_string(),
                "lladdr",
                &ns_mac,
                "dev",
                &host,
                "nud",
                "permanent",
            ])?;
            self.pin_neighbour_in(path)?;
        }
        Ok(())
    }

    /// The namespace end's permanent entry for the host end of `path`.
    fn pin_neighbour_in(&self, path: usize) -> io::Result<()> {
        self.ip_in(&[
            "neigh",
            "replace",
            &self.host_addr(path).to_string(),
            "lladdr",
            &self.mac(path, 1),
            "dev",
            &self.ns_end(path),
            "nud",
            "permanent",
        ])
    }

    /// `path` if there is such a path.
    fn check(&self, path: usize) -> usize {
        assert!(
            path < self.paths,
            "path {path} of a server with {} paths",
            self.paths
        );
        path
    }

    /// The `.4p + offset` address of the /24.
    fn addr(&self, path: usize, offset: u8) -> Ipv4Addr {
        // `path` < 64, so `4p + 2` < 256.
        let last = (path as u8) * 4 + offset;
        Ipv4Addr::new(10, (self.block >> 8) as u8, self.block as u8, last)
    }

    /// The host end's address on `path`.
    fn host_addr(&self, path: usize) -> Ipv4Addr {
        self.addr(path, 1)
    }

    /// The namespace end's address on `path`, where the server listens.
    fn server_addr(&self, path: usize) -> Ipv4Addr {
        self.addr(path, 2)
    }

    /// `addr/30`.
    fn cidr(&self, addr: Ipv4Addr) -> String {
        format!("{addr}/30")
    }

    /// The host end's interface name (at most 15 bytes).
    fn host_end(&self, path: usize) -> String {
        format!("lg{:04x}h{path}", self.block)
    }

    /// The namespace end's interface name.
    fn ns_end(&self, path: usize) -> String {
        format!("lg{:04x}n{path}", self.block)
    }

    /// A locally administered link-layer address for `path`'s end `end`.
    fn mac(&self, path: usize, end: u8) -> String {
        format!(
            "02:6c:{:02x}:{:02x}:{:02x}:{end:02x}",
            self.block >> 8,
            self.block & 0xff,
            path
        )
    }

    /// Runs `ip -n <name> <args>`.
    fn ip_in(&self, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Namespace {
    /// Deletes the paths (each pair goes with either end) and the
    /// namespace. The pairs go first: a namespace outlives its name while
    /// something in it (a lingering connection) still holds it, and its
    /// interfaces with it.
    fn drop(&mut self) {
        for path in 0..self.paths {
            let _ = ip(&["link", "del", &self.host_end(path)]);
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Runs `ip <args>`.
fn ip(args: &[&str]) -> io::Result<()> {
    run(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    )
    .map(drop)
}

/// Why namespaces cannot be made here, or `None` when a probe namespace
/// with a veth pair into it works.
fn probe() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("network namespaces need root".into());
    }
    if let Err(e) = ip(&["-V"]) {
        return Some(format!("no `ip` command (install iproute2): {e}"));
    }
    let name = format!("{NS_PREFIX}{}-probe", std::process::id());
    let host = format!("lgp{}", std::process::id());
    let made = ip(&["netns", "add", &name]).and_then(|()| {
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", "lgprobe", "netns", &name,
        ])
    });
    let _ = ip(&["netns", "del", &name]);
    made.err()
        .map(|e| format!("cannot make a network namespace: {e}"))
}

/// The IPv4 networks the host routes or holds addresses in (any table),
/// as (network, prefix length); default routes left out.
fn taken_networks() -> io::Result<Vec<(u32, u8)>> {
    let routes = run(
        Command::new("ip").args(["-4", "route", "show", "table", "all"]),
        "ip route show",
    )?;
    let addrs = run(
        Command::new("ip").args(["-4", "-o", "addr", "show"]),
        "ip addr show",
    )?;
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    let addrs = String::from_utf8_lossy(&addrs.stdout).into_owned();
    let route_nets = routes.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        let mut first = words.next()?;
        if matches!(
            first,
            "unicast"
                | "local"
                | "broadcast"
                | "multicast"
                | "anycast"
                | "blackhole"
                | "unreachable"
                | "prohibit"
                | "throw"
                | "nat"
        ) {
            first = words.next()?;
        }
        parse_net(first)
    });
    // "2: eth0    inet 192.0.2.2/24 brd …"
    let addr_nets = addrs.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "inet")?;
        parse_net(words.next()?)
    });
    Ok(route_nets
        .chain(addr_nets)
        .filter(|&(_, len)| len > 0)
        .collect())
}

/// `a.b.c.d/len` or `a.b.c.d` (a /32).
fn parse_net(text: &str) -> Option<(u32, u8)> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, len.parse().ok()?),
        None => (text, 32),
    };
    let addr: Ipv4Addr = addr.parse().ok()?;
    (len <= 32).then_some((u32::from(addr), len))
}

/// Whether the networks `a/a_len` and `b/b_len` share an address.
fn overlaps(a: u32, a_len: u8, b: u32, b_len: u8) -> bool {
    let len = u32::from(a_len.min(b_len));
    len == 0 || (a >> (32 - len)) == (b >> (32 - len))
}

/// Deletes the namespaces of test processes that are gone (their servers
/// are stopped by [`TempPostgres`]'s own sweep). Best effort, Linux only.
fn sweep_leftovers() {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(out) = run(Command::new("ip").args(["netns", "list"]), "ip netns list") else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "llmg-1234-0 (id: 3)"
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Runs `cmd` with no input, killing it after `within`; its output, or an
/// error naming `what` (of kind [`io::ErrorKind::TimedOut`] when killed).
fn run_within(cmd: &mut Command, within: Duration, what: &str) -> io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: cannot run: {e}")))?;
    let deadline = Instant::now() + within;
    loop {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            if out.status.success() {
                return Ok(out);
            }
            return Err(io::Error::other(format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} took longer than {within:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_overlap_when_the_shorter_prefix_matches() {
        let net = |s: &str| parse_net(s).unwrap_or((0, 0));
        let (a, _) = net("10.1.2.0/24");
        assert!(overlaps(a, 24, net("10.0.0.0/8").0, 8));
        assert!(overlaps(a, 24, net("10.1.2.5").0, 32));
        assert!(!overlaps(a, 24, net("10.1.3.0/24").0, 24));
        assert!(!overlaps(a, 24, net("192.0.2.0/24").0, 24));
        assert_eq!(parse_net("default"), None);
        assert_eq!(parse_net("10.1.2.0/33"), None);
    }
}

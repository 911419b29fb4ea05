//! `PartitionablePostgres`: PostgreSQL in a network namespace, reached over
//! paths that can each be cut silently and healed — two paths both
//! working; one cut (an established connection stalls without being
//! closed, a new one times out) while the other still works; healed (a new
//! connection works); nothing left once dropped, nor after the test process
//! was killed outright (the next start sweeps it).
//!
//! Skipped, with the reason printed, where network namespaces cannot be
//! made (not root, no `ip`); PostgreSQL itself must be installed, as for
//! `TempPostgres`'s tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use llmgram_fakes::PartitionablePostgres;

/// Starts a server with `paths` paths, or `None` (reason printed) when
/// namespaces cannot be made here.
fn start(paths: usize) -> Option<PartitionablePostgres> {
    if let Some(why) = PartitionablePostgres::unavailable_because() {
        eprintln!("skipped: {why}");
        return None;
    }
    let began = Instant::now();
    let pg = PartitionablePostgres::start(paths).expect("PostgreSQL in a namespace");
    eprintln!("PartitionablePostgres::start took {:?}", began.elapsed());
    Some(pg)
}

/// PostgreSQL's SSLRequest: the server answers one byte (`N`: no TLS), so
/// it is a round trip on an open connection without a client library.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A TCP connection to the server over `path`.
fn connect(
    pg: &PartitionablePostgres,
    path: usize,
    within: Duration,
) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from((pg.addr_via(path), pg.port()));
    TcpStream::connect_timeout(&addr, within)
}

/// Sends an SSLRequest on `stream` and reads the answer byte within
/// `within`.
fn ssl_round_trip(stream: &mut TcpStream, within: Duration) -> std::io::Result<u8> {
    stream.set_read_timeout(Some(within))?;
    stream.write_all(&SSL_REQUEST)?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer)?;
    Ok(answer[0])
}

#[test]
fn two_paths_reach_one_server() {
    let Some(pg) = start(2) else { return };
    assert_eq!(pg.paths(), 2);
    assert_ne!(pg.addr_via(0), pg.addr_via(1));
    assert_eq!(
        pg.psql("select 1").unwrap(),
        "1",
        "psql on the namespace's loopback"
    );
    pg.psql("create table t (x int); insert into t values (42)")
        .unwrap();
    for path in 0..2 {
        let url = pg.url_via(path);
        assert!(url.starts_with("postgres://llmgram@10."), "{url}");
        assert_eq!(
            pg.psql_via(path, "select x from t", Duration::from_secs(10))
                .unwrap(),
            "42",
            "over path {path}"
        );
    }
    assert!(
        pg.psql("show listen_addresses")
            .unwrap()
            .contains(&pg.addr_via(1).to_string())
    );
}

#[test]
fn a_cut_path_drops_packets_silently_while_the_other_works_and_heals() {
    let Some(pg) = start(2) else { return };
    let mut before = connect(&pg, 0, Duration::from_secs(5)).unwrap();
    let mut other = connect(&pg, 1, Duration::from_secs(5)).unwrap();

    pg.cut(0).unwrap();
    pg.cut(0).unwrap(); // cutting again changes nothing

    // An established connection stalls: no answer, no reset, no end.
    let stalled = ssl_round_trip(&mut before, Duration::from_millis(1500)).unwrap_err();
    assert!(
        matches!(stalled.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "a cut path stalls, it does not fail: {stalled}"
    );
    // A new connection times out (no "no route to host", no refusal).
    let began = Instant::now();
    let refused = connect(&pg, 0, Duration::from_secs(2)).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::TimedOut, "{refused}");
    assert!(began.elapsed() >= Duration::from_secs(2));
    let err = pg
        .psql_via(0, "select 1", Duration::from_secs(2))
        .unwrap_err();
    assert!(
        err.kind() == ErrorKind::TimedOut || err.to_string().contains("timeout"),
        "{err}"
    );
    // The other path, its connections and the loopback still work.
    assert_eq!(
        ssl_round_trip(&mut other, Duration::from_secs(5)).unwrap(),
        b'N'
    );
    assert_eq!(
        pg.psql_via(1, "select 2", Duration::from_secs(10)).unwrap(),
        "2"
    );
    assert_eq!(pg.psql("select 3").unwrap(), "3");

    pg.heal(0).unwrap();
    let began = Instant::now();
    let mut after = connect(&pg, 0, Duration::from_secs(5)).unwrap();
    assert!(began.elapsed() < Duration::from_secs(1), "connects at once");
    assert_eq!(
        ssl_round_trip(&mut after, Duration::from_secs(5)).unwrap(),
        b'N'
    );
    assert_eq!(
        pg.psql_via(0, "select 4", Duration::from_secs(10)).unwrap(),
        "4"
    );
}

/// Also with a path cut and a connection open across it (the server's end
/// of it would linger in the kernel, retrying, had the path stayed cut).
#[test]
fn drop_stops_the_server_and_deletes_the_namespace() {
    let Some(pg) = start(2) else { return };
    let namespace = pg.namespace().to_owned();
    let addr = pg.addr_via(0);
    let _open = connect(&pg, 0, Duration::from_secs(5)).unwrap();
    pg.cut(0).unwrap();
    drop(pg);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&namespace),
        "{namespace} is deleted"
    );
    // Its paths go with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while route_exists(&addr.to_string()) {
        assert!(Instant::now() < deadline, "the path to {addr} is left");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Set on the child process of
/// [`leftovers_of_a_killed_test_process_are_swept_by_the_next_start`].
const ABORT_HELPER: &str = "LLMGRAM_FAKES_NETNS_ABORT_HELPER";

/// Not a test on its own: the child process of
/// [`leftovers_of_a_killed_test_process_are_swept_by_the_next_start`] starts
/// a server in a namespace, says which, and aborts, so no `Drop` runs.
#[test]
#[ignore = "helper run as a child process by another test"]
fn abort_helper_owning_a_namespace() {
    if std::env::var_os(ABORT_HELPER).is_none() {
        return;
    }
    let pg = PartitionablePostgres::start(1).unwrap();
    println!("LEFT {} {}", pg.namespace(), pg.addr_via(0));
    std::process::abort();
}

#[test]
fn leftovers_of_a_killed_test_process_are_swept_by_the_next_start() {
    if let Some(why) = PartitionablePostgres::unavailable_because() {
        eprintln!("skipped: {why}");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "abort_helper_owning_a_namespace"])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .env(ABORT_HELPER, "1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the helper aborted");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("LEFT ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("helper said where: {stdout}"));
    let (namespace, addr) = line.split_once(' ').unwrap();
    let namespaces = || {
        String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    assert!(
        namespaces().contains(namespace),
        "the aborted process left it"
    );

    let _pg = start(1).unwrap();
    assert!(!namespaces().contains(namespace), "{namespace} is deleted");
    // Its server stopped (by TempPostgres's own sweep), nothing holds the
    // namespace, and its path goes with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while route_exists(addr) {
        assert!(Instant::now() < deadline, "the path to {addr} is left");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the host still routes to `addr` over one of the paths.
fn route_exists(addr: &str) -> bool {
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .unwrap();
    let prefix = &addr[..addr.rfind('.').unwrap()];
    String::from_utf8_lossy(&routes.stdout).contains(&format!("{prefix}."))
}

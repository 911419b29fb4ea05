//! `TempPostgres`: a real PostgreSQL cluster per test — start, queries,
//! restarts after a fast and after an immediate shutdown, clusters side by
//! side, and nothing left behind once dropped.
//!
//! These tests panic when PostgreSQL is not installed (CI installs it); they
//! never skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::path::Path;
use std::time::Instant;

use llmgram_fakes::TempPostgres;

/// Starts a cluster, failing clearly when PostgreSQL is missing.
fn start() -> TempPostgres {
    assert!(
        TempPostgres::available(),
        "PostgreSQL is not installed: install the distribution's `postgresql` package (.ci/run does)"
    );
    let began = Instant::now();
    let pg = TempPostgres::start().expect("start PostgreSQL");
    eprintln!("TempPostgres::start took {:?}", began.elapsed());
    pg
}

/// Whether process `pid` is gone (a zombie waiting for a reaper counts as
/// gone: it holds no port, no files, no memory).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S …": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

#[test]
fn starts_and_answers_select_1_as_llmgram_on_its_url() {
    let pg = start();
    assert_eq!(pg.psql("select 1").unwrap(), "1");
    assert_eq!(
        pg.psql("select current_user, current_database()").unwrap(),
        "llmgram|llmgram"
    );
    assert_eq!(
        pg.url(),
        format!("postgres://llmgram@127.0.0.1:{}/llmgram", pg.port())
    );
    // Durability settings are the server's defaults: tests measure them.
    assert_eq!(pg.psql("show fsync").unwrap(), "on");
    assert_eq!(pg.psql("show synchronous_commit").unwrap(), "on");
    assert_eq!(pg.psql("show listen_addresses").unwrap(), "127.0.0.1");
    TcpStream::connect(("127.0.0.1", pg.port())).expect("listens on its port");
}

#[test]
fn psql_reports_a_failing_statement() {
    let pg = start();
    let err = pg.psql("select * from no_such_table").unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");
}

#[test]
fn create_insert_and_a_fast_restart_keeps_the_data() {
    let mut pg = start();
    pg.psql("create table t (id int primary key, v text)")
        .unwrap();
    pg.psql("insert into t values (1, 'one'), (2, 'two')")
        .unwrap();
    assert_eq!(pg.psql("select v from t order by id").unwrap(), "one\ntwo");
    let port = pg.port();

    pg.stop();
    assert!(pg.pid().is_none(), "postmaster.pid is gone after stop");
    assert!(pg.psql("select 1").is_err(), "no server after stop");
    pg.stop(); // a no-op when stopped

    pg.start_again().unwrap();
    assert_eq!(pg.port(), port, "same port after a restart");
    assert_eq!(pg.psql("select v from t order by id").unwrap(), "one\ntwo");
}

#[test]
fn an_immediate_shutdown_recovers_every_committed_row() {
    let mut pg = start();
    pg.psql("create table t (id int primary key)").unwrap();
    pg.psql("insert into t select generate_series(1, 1000)")
        .unwrap();
    let pid = pg.pid().expect("running server has a pid");

    pg.kill();
    assert!(process_gone(pid), "postmaster {pid} is gone after kill");

    pg.start_again().unwrap();
    assert_eq!(pg.psql("select count(*) from t").unwrap(), "1000");
    pg.psql("insert into t values (1001)").unwrap();
    assert_eq!(pg.psql("select max(id) from t").unwrap(), "1001");
}

#[test]
fn start_again_on_a_taken_port_fails_with_the_server_log_and_can_retry() {
    let mut pg = start();
    pg.psql("create table t (x int); insert into t values (7)")
        .unwrap();
    pg.stop();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", pg.port())).unwrap();
    let err = pg.start_again().unwrap_err().to_string();
    // `start` retries on a new port when it sees this.
    assert!(err.contains("already in use"), "{err}");
    assert!(pg.pid().is_none(), "no server after a failed start");
    drop(squatter);
    pg.start_again().unwrap();
    assert_eq!(pg.psql("select x from t").unwrap(), "7");
}

#[test]
fn two_clusters_run_side_by_side_on_their_own_ports_and_data() {
    let a = start();
    let b = start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    a.psql("create table only_in_a (x int)").unwrap();
    b.psql("create table only_in_b (x int)").unwrap();
    let tables = "select string_agg(tablename, ',') from pg_tables where schemaname = 'public'";
    assert_eq!(a.psql(tables).unwrap(), "only_in_a");
    assert_eq!(b.psql(tables).unwrap(), "only_in_b");
}

#[test]
fn drop_stops_the_server_and_removes_its_directory() {
    let pg = start();
    let pid = pg.pid().expect("running server has a pid");
    let port = pg.port();
    let data = pg.data_dir();
    let dir = data.parent().unwrap().to_path_buf();
    assert!(Path::new(&data).join("postmaster.pid").is_file());

    drop(pg);
    assert!(process_gone(pid), "postmaster {pid} is gone after drop");
    assert!(!dir.exists(), "{} is removed after drop", dir.display());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens on {port} after drop"
    );
}

#[test]
fn drop_after_a_panic_stops_the_server() {
    let (tx, rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        let pg = start();
        tx.send((pg.pid().unwrap(), pg.data_dir())).unwrap();
        panic!("a failing test owning a cluster");
    });
    assert!(test.join().is_err(), "the thread panicked");
    let (pid, data) = rx.recv().unwrap();
    assert!(
        process_gone(pid),
        "postmaster {pid} is gone after the panic"
    );
    assert!(
        !data.exists(),
        "{} is removed after the panic",
        data.display()
    );
}

#[tokio::test]
async fn starts_from_an_async_test_through_spawn_blocking() {
    let pg = tokio::task::spawn_blocking(start).await.unwrap();
    let pg = tokio::task::spawn_blocking(move || {
        assert_eq!(pg.psql("select 2 + 2").unwrap(), "4");
        pg
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}

/// Set on the child process of
/// [`leftovers_of_a_killed_test_process_are_swept_by_the_next_start`].
const ABORT_HELPER: &str = "LLMGRAM_FAKES_PG_ABORT_HELPER";

/// Not a test on its own: the child process of
/// [`leftovers_of_a_killed_test_process_are_swept_by_the_next_start`] starts
/// a cluster, says where, and aborts, so no `Drop` runs.
#[test]
#[ignore = "helper run as a child process by another test"]
fn abort_helper_owning_a_cluster() {
    if std::env::var_os(ABORT_HELPER).is_none() {
        return;
    }
    let pg = start();
    println!("LEFT {} {}", pg.pid().unwrap(), pg.data_dir().display());
    std::process::abort();
}

#[test]
fn leftovers_of_a_killed_test_process_are_swept_by_the_next_start() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "abort_helper_owning_a_cluster"])
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
    let (pid, data) = line.split_once(' ').unwrap();
    let pid: u32 = pid.parse().unwrap();
    let dir = Path::new(data).parent().unwrap().to_path_buf();
    assert!(
        !process_gone(pid),
        "the aborted process left its server running"
    );
    assert!(dir.exists());

    let _pg = start();
    assert!(process_gone(pid), "the leftover server {pid} is stopped");
    assert!(!dir.exists(), "{} is removed", dir.display());
}

//! A real, throwaway PostgreSQL server for tests: [`TempPostgres`].
//!
//! Issue 18 runs several llmgram instances on one shared PostgreSQL; its
//! tests need the real server (transactions, locks, crash recovery), not a
//! fake. [`TempPostgres::start`] makes a cluster in a fresh temporary
//! directory, serves it on `127.0.0.1` and a free port, and [`Drop`] stops it
//! and removes the directory, also when the test panics.
//!
//! It drives the distribution's own binaries (`initdb`, `pg_ctl`, `postgres`,
//! `psql`; `.ci/run` installs the `postgresql` package when they are
//! missing), so this crate needs no PostgreSQL client library.
//!
//! # Root
//! PostgreSQL refuses to run as root, and CI runs as root. When the effective
//! uid is 0, the server programs run as the `postgres` system user that the
//! Debian package creates (`runuser -u postgres -- …`) and the temporary
//! directory is handed to that user; its parents must be traversable by it
//! (the system temporary directory is).
//!
//! # Start time
//! `initdb` is the slow part (most of a second on an idle machine, several on
//! a loaded one), so each test process runs it once, into a template that
//! already holds the `llmgram` role and database, and every cluster starts
//! from a copy of it (`cp -a`, tens of milliseconds). The server itself keeps
//! its defaults (`fsync` and `synchronous_commit` on): tests measure
//! durability.
//!
//! # Leftovers
//! Every directory is named `llmgram-pg-<pid>-…` after the test process that
//! owns it. The template outlives its process (statics are never dropped), as
//! does everything of a process killed outright (`SIGKILL`, an abort); every
//! [`TempPostgres::start`] stops any server left in such a directory whose
//! process is gone and removes it (Linux only: it asks `/proc`).
//!
//! # In a network namespace
//! [`PartitionablePostgres`](crate::PartitionablePostgres) runs the same
//! cluster with its server (and `psql`) inside a network namespace
//! (`ip netns exec`), listening on extra addresses there:
//! `TempPostgres::start_in` is the constructor it shares with
//! [`TempPostgres::start`].

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

use tempfile::TempDir;

use crate::lock;

/// Name of the superuser role and of the database every cluster has.
const NAME: &str = "llmgram";

/// Start of every directory this module makes in the temporary directory.
const DIR_PREFIX: &str = "llmgram-pg-";

/// How many ports [`TempPostgres::start`] tries before giving up, when another
/// process takes the chosen port between probing and binding it.
const PORT_ATTEMPTS: usize = 5;

/// A PostgreSQL cluster in a temporary directory, served on `127.0.0.1`,
/// owned by the test that started it.
///
/// Its superuser and its database are both named `llmgram`, with `trust`
/// authentication, so [`url`](Self::url) needs no password. The cluster
/// lives until the value is dropped; [`stop`](Self::stop),
/// [`kill`](Self::kill) and [`start_again`](Self::start_again) restart the
/// server on the same data and port in between.
///
/// All methods block on child processes (`pg_ctl`, `psql`) for up to a few
/// hundred milliseconds, and [`Drop`] does too: call them from sync tests
/// directly and from async tests through `tokio::task::spawn_blocking`.
///
/// Tests that need PostgreSQL panic when it is not installed rather than
/// skip (CI installs it); [`available`](Self::available) lets them say so
/// clearly.
#[derive(Debug)]
pub struct TempPostgres {
    /// The server binaries.
    bins: &'static Bins,
    /// The user the server programs run as.
    owner: &'static Owner,
    /// The temporary directory: `data/`, the Unix socket, `server.log`.
    /// Removed when dropped, after [`Drop`] stopped the server.
    dir: TempDir,
    /// The TCP port, the same across restarts.
    port: u16,
    /// Whether the server was started and not stopped since.
    running: bool,
    /// The network namespace the server and `psql` run in (`ip netns
    /// exec`); `None`: the host's.
    netns: Option<String>,
}

impl TempPostgres {
    /// Whether the PostgreSQL server binaries are installed (in `PATH`, else
    /// in `/usr/lib/postgresql/<major>/bin`).
    ///
    /// For a clear message only: tests that need PostgreSQL must panic when
    /// it is missing, never skip silently.
    pub fn available() -> bool {
        bins().is_ok()
    }

    /// Makes a cluster in a new temporary directory and starts it on
    /// `127.0.0.1` and a free port; returns when it accepts connections.
    ///
    /// Blocking (see the type's documentation). Retries with a new port a
    /// few times when the chosen one is taken meanwhile.
    ///
    /// # Errors
    /// When the binaries are missing, when running as root without a
    /// `postgres` user, or when `initdb` or the server fails; the message
    /// includes the server log's tail.
    pub fn start() -> io::Result<TempPostgres> {
        Self::start_in(None, &[])
    }

    /// As [`start`](Self::start), with the server and `psql` run inside the
    /// network namespace `netns` (which must exist) when given, listening
    /// on `listen` besides that namespace's `127.0.0.1`.
    pub(crate) fn start_in(netns: Option<&str>, listen: &[Ipv4Addr]) -> io::Result<TempPostgres> {
        let bins = bins()?;
        let owner = owner()?;
        sweep_leftovers(bins, owner);
        let template = template(bins, owner)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()?;
        owner.take(dir.path())?;
        let data = dir.path().join("data");
        run(
            Command::new("cp").arg("-a").arg(&template).arg(&data),
            "cp -a (PostgreSQL template)",
        )?;
        let socket_dir = dir.path().to_string_lossy().replace('\'', "''");
        append_conf(
            &data,
            &format!("unix_socket_directories = '{socket_dir}'\n"),
        )?;
        if !listen.is_empty() {
            let addresses: Vec<String> = std::iter::once(Ipv4Addr::LOCALHOST)
                .chain(listen.iter().copied())
                .map(|a| a.to_string())
                .collect();
            append_conf(
                &data,
                &format!("listen_addresses = '{}'\n", addresses.join(",")),
            )?;
            // Clients on those addresses' networks, as on the loopback.
            OpenOptions::new()
                .append(true)
                .open(data.join("pg_hba.conf"))?
                .write_all(b"host all all samenet trust\n")?;
        }
        let mut pg = TempPostgres {
            bins,
            owner,
            dir,
            port: 0,
            running: false,
            netns: netns.map(str::to_owned),
        };
        let mut attempt = 1;
        loop {
            pg.port = free_port()?;
            match pg.start_again() {
                Ok(()) => return Ok(pg),
                Err(e) if attempt < PORT_ATTEMPTS && e.to_string().contains("already in use") => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The connection URL: `postgres://llmgram@127.0.0.1:<port>/llmgram`
    /// (for a server in a network namespace, that namespace's loopback).
    pub fn url(&self) -> String {
        format!("postgres://{NAME}@127.0.0.1:{}/{NAME}", self.port)
    }

    /// The TCP port on `127.0.0.1`, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory (it holds `postmaster.pid` while the
    /// server runs).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's process id, from `postmaster.pid`; `None` when it is not
    /// running.
    pub fn pid(&self) -> Option<u32> {
        read_pid(&self.data_dir())
    }

    /// Stops the server with a fast shutdown (clients disconnected, open
    /// transactions rolled back, a checkpoint written). Does nothing when it
    /// is not running.
    ///
    /// # Panics
    /// When `pg_ctl` fails: the test's premise (a stopped server) would not
    /// hold.
    pub fn stop(&mut self) {
        self.shut_down("fast");
    }

    /// Stops the server with an immediate shutdown: every process quits at
    /// once with no checkpoint, like a crash, so the next
    /// [`start_again`](Self::start_again) runs crash recovery. Does nothing
    /// when it is not running.
    ///
    /// # Panics
    /// When `pg_ctl` fails, as [`stop`](Self::stop).
    pub fn kill(&mut self) {
        self.shut_down("immediate");
    }

    /// Starts the server again on the same data and port (a "database
    /// restart"); returns when it accepts connections. Does nothing when it
    /// is running.
    ///
    /// # Errors
    /// When the server does not start, e.g. because another process took the
    /// port meanwhile; the message includes the server log's tail.
    pub fn start_again(&mut self) -> io::Result<()> {
        if self.running {
            return Ok(());
        }
        let log = self.dir.path().join("server.log");
        let log_start = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let result = run(
            in_netns(self.netns.as_deref(), self.owner.argv(&self.bins.pg_ctl))
                .current_dir(self.dir.path())
                .args(["start", "-w", "-s", "-t", "60", "-D"])
                .arg(self.data_dir())
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(format!("-p {}", self.port)),
            "pg_ctl start",
        );
        match result {
            Ok(_) => {
                self.running = true;
                Ok(())
            }
            Err(e) => Err(io::Error::other(format!(
                "{e}; server log: {}",
                log_tail(&log, log_start)
            ))),
        }
    }

    /// Runs `sql` with `psql -At` as `llmgram` on database `llmgram` and
    /// returns its standard output without the final newline: one row a
    /// line, columns separated by `|`. Several statements separated by `;`
    /// run as one query string, and only the last one's rows are returned.
    ///
    /// # Errors
    /// When `psql` cannot run, cannot connect, or the statement fails
    /// (`ON_ERROR_STOP`); the message includes its standard error.
    pub fn psql(&self, sql: &str) -> io::Result<String> {
        let out = run(
            in_netns(self.netns.as_deref(), vec![self.bins.psql.clone().into()])
                .current_dir(self.dir.path())
                .env("PGCONNECT_TIMEOUT", "10")
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .args(["-h", "127.0.0.1", "-U", NAME, "-d", NAME, "-p"])
                .arg(self.port.to_string())
                .arg("-c")
                .arg(sql),
            "psql",
        )?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.ends_with('\n') {
            text.pop();
        }
        Ok(text)
    }

    /// Stops a running server with `pg_ctl stop -m <mode>`; panics on
    /// failure (see [`stop`](Self::stop)).
    fn shut_down(&mut self, mode: &str) {
        if let Err(e) = self.try_shut_down(mode) {
            panic!("llmgram-fakes: cannot stop PostgreSQL ({mode}): {e}");
        }
    }

    /// Stops a running server with `pg_ctl stop -m <mode>`, waiting until it
    /// is gone.
    fn try_shut_down(&mut self, mode: &str) -> io::Result<()> {
        if !self.running {
            return Ok(());
        }
        pg_ctl_stop(self.bins, self.owner, &self.data_dir(), mode)?;
        self.running = false;
        Ok(())
    }
}

impl Drop for TempPostgres {
    /// Stops the server at once (the data is thrown away) and removes the
    /// directory. Also stops a server whose start failed half-way; if
    /// `pg_ctl` fails, kills the server process outright.
    fn drop(&mut self) {
        let data = self.data_dir();
        if (self.running || server_left(&data).is_some())
            && pg_ctl_stop(self.bins, self.owner, &data, "immediate").is_err()
            && let Some(pid) = server_left(&data)
            && let Ok(pid) = i32::try_from(pid)
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            // Its children notice the postmaster's death and exit.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        // `dir` is removed when the fields drop, right after this.
    }
}

/// Where the server binaries are.
#[derive(Debug)]
struct Bins {
    /// `initdb`.
    initdb: PathBuf,
    /// `pg_ctl`.
    pg_ctl: PathBuf,
    /// `postgres` (for the template's single-user session).
    postgres: PathBuf,
    /// `psql`: beside the server binaries, else from `PATH`.
    psql: PathBuf,
}

/// Finds the server binaries once per process.
fn bins() -> io::Result<&'static Bins> {
    static BINS: OnceLock<Option<Bins>> = OnceLock::new();
    BINS.get_or_init(find_bins).as_ref().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) are neither in PATH nor in \
             /usr/lib/postgresql/<major>/bin: install the distribution's `postgresql` package \
             (.ci/run does)",
        )
    })
}

/// Looks for a directory holding `initdb`, `pg_ctl` and `postgres`: the one
/// `pg_ctl` in `PATH` resolves to, else the highest
/// `/usr/lib/postgresql/<major>/bin`.
fn find_bins() -> Option<Bins> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let from_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("pg_ctl"))
            .filter(|pg_ctl| pg_ctl.is_file())
            // A symlink such as /usr/local/bin/pg_ctl: the others sit beside
            // its target.
            .filter_map(|pg_ctl| {
                fs::canonicalize(pg_ctl)
                    .ok()?
                    .parent()
                    .map(Path::to_path_buf)
            })
            .find(|dir| complete(dir))
    });
    let dir = from_path.or_else(|| {
        fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let major: u32 = entry.file_name().to_str()?.parse().ok()?;
                Some((major, entry.path().join("bin")))
            })
            .filter(|(_, dir)| complete(dir))
            .max_by_key(|(major, _)| *major)
            .map(|(_, dir)| dir)
    })?;
    let psql = dir.join("psql");
    Some(Bins {
        initdb: dir.join("initdb"),
        pg_ctl: dir.join("pg_ctl"),
        postgres: dir.join("postgres"),
        psql: if psql.is_file() {
            psql
        } else {
            PathBuf::from("psql")
        },
    })
}

/// The user the server programs run as.
#[derive(Debug)]
enum Owner {
    /// The current user (not root).
    Me,
    /// Root: the `postgres` system user, through `runuser`.
    Postgres,
}

impl Owner {
    /// A command running `program` as this user.
    fn command(&self, program: &Path) -> Command {
        in_netns(None, self.argv(program))
    }

    /// The words of a command line running `program` as this user.
    fn argv(&self, program: &Path) -> Vec<OsString> {
        match self {
            Owner::Me => vec![program.into()],
            Owner::Postgres => ["runuser", "-u", "postgres", "--"]
                .iter()
                .map(OsString::from)
                .chain([program.into()])
                .collect(),
        }
    }

    /// Hands `dir` (not its contents) to this user.
    fn take(&self, dir: &Path) -> io::Result<()> {
        match self {
            Owner::Me => Ok(()),
            Owner::Postgres => run(
                Command::new("chown").arg("postgres:").arg(dir),
                "chown postgres:",
            )
            .map(drop),
        }
    }
}

/// A command running `program` with `args` in the network namespace
/// `netns` (`ip netns exec`, as root), or in this process's when `None`.
fn in_netns(netns: Option<&str>, argv: Vec<OsString>) -> Command {
    let mut args = argv.into_iter();
    let program = args.next().unwrap_or_default();
    let mut cmd = match netns {
        Some(netns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", netns]).arg(program);
            cmd
        }
        None => Command::new(program),
    };
    cmd.args(args);
    cmd
}

/// Decides once per process who runs the server.
fn owner() -> io::Result<&'static Owner> {
    static OWNER: OnceLock<Option<Owner>> = OnceLock::new();
    OWNER
        .get_or_init(|| {
            if !rustix::process::geteuid().is_root() {
                return Some(Owner::Me);
            }
            let known = Command::new("id")
                .args(["-u", "postgres"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            known.then_some(Owner::Postgres)
        })
        .as_ref()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "PostgreSQL refuses to run as root and there is no `postgres` user to run it as: \
                 install the distribution's `postgresql` package (.ci/run does)",
            )
        })
}

/// This process's template cluster, made on first use.
static TEMPLATE: Mutex<Option<TempDir>> = Mutex::new(None);

/// Returns the template's data directory, making it first if needed: a
/// cluster fresh from `initdb`, with the `llmgram` superuser, the `llmgram`
/// database and the settings every cluster shares. Never started as a
/// server, so copying it is a consistent cold copy.
fn template(bins: &Bins, owner: &Owner) -> io::Result<PathBuf> {
    let mut template = lock(&TEMPLATE);
    if let Some(dir) = template.as_ref() {
        return Ok(dir.path().join("data"));
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-template-", std::process::id()))
        .tempdir()?;
    owner.take(dir.path())?;
    let data = dir.path().join("data");
    run(
        owner
            .command(&bins.initdb)
            .current_dir(dir.path())
            .args([
                "-A",
                "trust",
                "-U",
                NAME,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&data),
        "initdb",
    )?;
    // Single-user mode: no server, no port. `fsync=off` only here: the copy
    // (`cp -a`) is not synced either, and nothing survives an OS crash.
    let out = run_with_input(
        owner
            .command(&bins.postgres)
            .current_dir(dir.path())
            .args(["--single", "-c", "fsync=off", "-D"])
            .arg(&data)
            .arg("postgres"),
        &format!("CREATE DATABASE {NAME}\n"),
        "postgres --single (CREATE DATABASE)",
    )?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if said.contains("ERROR") || said.contains("FATAL") {
        return Err(io::Error::other(format!(
            "postgres --single (CREATE DATABASE) failed: {}",
            said.trim()
        )));
    }
    append_conf(
        &data,
        "\n# llmgram-fakes TempPostgres\nlisten_addresses = '127.0.0.1'\n",
    )?;
    *template = Some(dir);
    Ok(data)
}

/// Removes the directories of test processes that are gone, stopping a
/// server still running in one. Best effort, Linux only (it asks `/proc`);
/// cheap (one listing of the temporary directory), so every
/// [`TempPostgres::start`] runs it.
fn sweep_leftovers(bins: &Bins, owner: &Owner) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let data = entry.path().join("data");
        if server_left(&data).is_some() {
            let _ = pg_ctl_stop(bins, owner, &data, "immediate");
        }
        let _ = fs::remove_dir_all(entry.path());
    }
}

/// The pid of a server still running on `data`: its `postmaster.pid` names a
/// live `postgres` process (not a recycled pid). Linux only (`/proc`).
fn server_left(data: &Path) -> Option<u32> {
    let pid = read_pid(data)?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "postgres").then_some(pid)
}

/// `pg_ctl stop -m <mode>`, waiting until the server is gone.
fn pg_ctl_stop(bins: &Bins, owner: &Owner, data: &Path, mode: &str) -> io::Result<()> {
    run(
        owner
            .command(&bins.pg_ctl)
            .current_dir(data.parent().unwrap_or(data))
            .args(["stop", "-w", "-s", "-t", "60", "-m", mode, "-D"])
            .arg(data),
        "pg_ctl stop",
    )
    .map(drop)
}

/// The postmaster's pid from `<data>/postmaster.pid`, if there is one.
fn read_pid(data: &Path) -> Option<u32> {
    fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Appends `text` to `<data>/postgresql.conf` (the last setting wins).
fn append_conf(data: &Path, text: &str) -> io::Result<()> {
    OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))?
        .write_all(text.as_bytes())
}

/// A port on `127.0.0.1` that was free a moment ago.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// The last lines the server logged since byte `from` of `log`.
fn log_tail(log: &Path, from: u64) -> String {
    let text = fs::read(log).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(0).min(text.len());
    let text = String::from_utf8_lossy(&text[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Runs `cmd` with no input; its output, or an error naming `what` with its
/// exit status and standard error.
pub(crate) fn run(cmd: &mut Command, what: &str) -> io::Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: cannot run: {e}")))?;
    check(out, what)
}

/// Runs `cmd` with `input` on its standard input, as [`run`].
fn run_with_input(cmd: &mut Command, input: &str, what: &str) -> io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: cannot run: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    check(child.wait_with_output()?, what)
}

/// `out` if its process succeeded, else an error naming `what`.
fn check(out: Output, what: &str) -> io::Result<Output> {
    if out.status.success() {
        return Ok(out);
    }
    Err(io::Error::other(format!(
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

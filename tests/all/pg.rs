//! A real PostgreSQL server for the tests, from Debian's `postgresql` package: `initdb` into
//! a temp dir, `postgres` on a free loopback port, stopped when the test ends. No Docker.
//!
//! - [`PgServer::start`] gives a test its own server, which it may stop and start again
//!   (the outage tests).
//! - [`shared`] is the one server of this test process, started on first use; the suites
//!   that run against both backends get a database of it per data dir ([`url_for_data_dir`]),
//!   so a test that restarts Kiln on the same data dir finds its jobs again.
//!
//! Run as root (CI), the server runs as the `postgres` user the package creates (PostgreSQL
//! refuses to run as root). It is started with the parent-death signal set, so a test
//! killed by a timeout does not leave it running, and the folders of dead test processes
//! are removed by the next one.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Whether the black-box suites run against PostgreSQL (`KILN_TEST_STORE=postgres`)
/// rather than redb.
pub fn enabled() -> bool {
    std::env::var("KILN_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// The folder of `initdb`, `postgres` and `createdb`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL's server programs were not found in /usr/lib/postgresql/*/bin: these \
             tests need a real server. Install Debian's package (`apt-get install -y \
             postgresql`, as scripts/install-test-deps does), or set KILN_PG_BIN to the folder \
             holding initdb and postgres"
        ),
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of the `postgres` user.
fn postgres_user() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: a valid NUL-terminated name; the result is read at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !entry.is_null(),
        "running as root, the tests start PostgreSQL as the `postgres` user, which does not \
         exist: install Debian's `postgresql` package"
    );
    // SAFETY: checked non-null above.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}

/// A command of PostgreSQL's that runs as the `postgres` user when the tests are root, and
/// dies with the thread that started it (see [`spawn_kept`]).
fn pg_command(program: &str) -> Command {
    let mut command = Command::new(bin_dir().join(program));
    let ids = running_as_root().then(postgres_user);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if let Some((uid, gid)) = ids
                && (libc::setgid(gid) != 0 || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            // Set after the uid change, which would clear it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
}

/// Spawns `command` from a thread that lives as long as the test process. The
/// parent-death signal fires when the *thread* that forked the child ends, so a server
/// spawned from a short-lived thread (tokio's blocking pool) would die with it.
fn spawn_kept(command: Command) -> std::io::Result<Child> {
    type Request = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<Mutex<std::sync::mpsc::Sender<Request>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("pg-keeper".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // Every sender is static: this thread never ends before the process.
            })
            .expect("starting the pg-keeper thread");
        Mutex::new(tx)
    });
    let (reply, answer) = std::sync::mpsc::channel();
    keeper
        .lock()
        .unwrap()
        .send((command, reply))
        .expect("the pg-keeper thread is alive");
    answer.recv().expect("the pg-keeper thread answers")
}

/// The parent of every test server's folder.
fn servers_root() -> PathBuf {
    std::env::temp_dir().join("kiln-test-pg")
}

/// Removes the folders of test processes that have ended.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(servers_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split('-').next()?.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A PostgreSQL server of the tests.
pub struct PgServer {
    root: PathBuf,
    pub port: u16,
    child: Mutex<Option<Child>>,
}

impl PgServer {
    /// `initdb`s a new cluster in a temp dir and starts it.
    pub fn start() -> Self {
        remove_stale();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let root = servers_root().join(format!("{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        if running_as_root() {
            let (uid, gid) = postgres_user();
            std::os::unix::fs::chown(servers_root(), Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).unwrap();
        }
        let output = pg_command("initdb")
            .arg("-D")
            .arg(root.join("data"))
            .args(["-U", "kiln", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("running initdb");
        assert!(
            output.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let server = Self {
            root,
            port: crate::support::free_port(),
            child: Mutex::new(None),
        };
        server.start_again();
        server
    }

    /// Starts the server (again, after [`PgServer::stop`]) and waits until it accepts
    /// connections.
    pub fn start_again(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("server.log"))
            .unwrap();
        if running_as_root() {
            let (uid, gid) = postgres_user();
            let _ = std::os::unix::fs::chown(self.root.join("server.log"), Some(uid), Some(gid));
        }
        let mut command = pg_command("postgres");
        command
            .arg("-D")
            .arg(self.root.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.root)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = spawn_kept(command).expect("starting postgres");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self
                .client("pg_isready")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server: a fast shutdown (clients are disconnected, nothing committed is
    /// lost), waiting until it is gone.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.root.join("server.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// One of PostgreSQL's client programs, pointed at this server as `kiln`.
    fn client(&self, program: &str) -> Command {
        let mut command = Command::new(bin_dir().join(program));
        command.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "kiln",
        ]);
        command
    }

    /// The URL of database `db` (created if missing).
    pub fn database(&self, db: &str) -> String {
        let output = self
            .client("createdb")
            .arg(db)
            .output()
            .expect("running createdb");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() || stderr.contains("already exists"),
            "createdb {db} failed: {stderr}"
        );
        self.url(db)
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://kiln@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with `psql` against database `db`; returns what it printed (unaligned,
    /// tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let output = self
            .client("psql")
            .args(["-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("running psql");
        assert!(
            output.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl PgServer {
    /// Loads a plain-SQL dump (as `pg_dump` writes it) into database `db`.
    pub fn restore(&self, db: &str, dump: &Path) {
        let output = self
            .client("psql")
            .args(["-d", db, "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(dump)
            .output()
            .expect("running psql");
        assert!(
            output.status.success(),
            "restoring {} failed: {}",
            dump.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

static SHARED: OnceLock<PgServer> = OnceLock::new();

extern "C" fn stop_shared() {
    if let Some(server) = SHARED.get() {
        server.stop();
        let _ = std::fs::remove_dir_all(&server.root);
    }
}

/// This test process's shared server.
pub fn shared() -> &'static PgServer {
    SHARED.get_or_init(|| {
        let server = PgServer::start();
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(stop_shared) };
        server
    })
}

/// The shared server's database for Kiln's data dir `data_dir` (one per data dir, so a
/// restart on the same data dir sees the same jobs).
pub fn url_for_data_dir(data_dir: &Path) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut hasher);
    shared().database(&format!("kiln_{:016x}", hasher.finish()))
}

/// The `[store]` table that points Kiln at PostgreSQL in the PostgreSQL pass of the
/// suites, or nothing (redb, or a test that chose its store in `extra_config` itself).
pub fn store_config(data_dir: &Path, extra_config: &str) -> String {
    if enabled() && !extra_config.contains("[store]") {
        format!("\n[store]\nurl = \"{}\"\n", url_for_data_dir(data_dir))
    } else {
        String::new()
    }
}

//! Where sandbox servers and processes live: private directories under one root per uid,
//! leftovers of dead test processes, exit-time cleanup, random passwords, private files and
//! greeting probes.
//!
//! Every directory is named `PID-…` after the process that made it: a later run removes those
//! whose process is gone, and the process itself removes them at exit (see [`register`]).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::process::{POLL, pid_running, spawn_tied};

/// Attempts at finding a port that no other process grabs first.
pub(crate) const START_ATTEMPTS: usize = 5;
/// Lines shown from a server's error.log in error messages.
const LOG_TAIL_LINES: usize = 30;

/// The value `init` gives on first use, kept for the whole process (a failure as its text).
pub(crate) fn once<T>(
    cell: &'static OnceLock<Result<T, String>>,
    init: impl FnOnce() -> Result<T>,
) -> Result<&'static T> {
    cell.get_or_init(|| init().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

/// `BASE/sluice-sandbox-UID`, created on first use; leftovers of dead processes are removed then.
/// BASE is `/dev/shm` when it is a writable tmpfs with room, else the temporary directory.
pub(crate) fn sandbox_root() -> Result<&'static Path> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    once(&ROOT, || {
        let root = base_dir().join(format!("sluice-sandbox-{}", euid()));
        prepare_root(&root)?;
        Ok(root)
    })
    .map(PathBuf::as_path)
}

/// Room a memory file system must have to hold the sandboxes (a dozen servers' data directories).
const MEMORY_FS_ROOM: u64 = 4 << 30;

/// Where sandboxes go. Data directories in memory make DDL (`TRUNCATE`, `CREATE TABLE`) cost a
/// few milliseconds instead of tens, which the differential checker does between runs; what a
/// test checks after `kill -9` of a server is unaffected (the files outlive the process).
fn base_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if free_bytes(shm).is_some_and(|free| free >= MEMORY_FS_ROOM) {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Free bytes in the file system of `dir`, if it exists and this user may write there.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path; `st` is written by statvfs before it is read.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Creates `root` (mode 0700, with its parents) and removes the leftovers of dead processes in it.
pub(crate) fn prepare_root(root: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .with_context(|| format!("cannot create {}", root.display()))?;
    remove_leftovers(root);
    Ok(())
}

/// Removes `PID-*` entries under `root` whose process no longer runs; returns how many.
pub(crate) fn remove_leftovers(root: &Path) -> usize {
    let Ok(entries) = fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // Another process may remove the same leftover at the same time: ignore errors.
        if pid != std::process::id()
            && !pid_running(pid)
            && fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Creates a new private directory `parent/PID-{infix}N` (mode 0700), unique in this process.
pub(crate) fn create_private_dir(parent: &Path, infix: &str) -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = parent.join(format!(
        "{}-{infix}{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Copies the tree `from` to the new directory `to` (mode 0700).
pub(crate) fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    DirBuilder::new().mode(0o700).create(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Creates `path`, which must not exist yet, readable and writable by this user only.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The last `lines` lines of the text file `path`; empty if it cannot be read.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let log = fs::read(path).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The effective user id of this process.
fn euid() -> libc::uid_t {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    euid() == 0
}

/// 24 random letters and digits from `/dev/urandom`.
pub(crate) fn random_password() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 24];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes
        .iter()
        .map(|&b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect())
}

/// A single-quoted SQL string literal.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Random passwords of a sandbox server's accounts `root`, `app` and `other`.
#[derive(Debug, Clone)]
pub(crate) struct Passwords {
    pub(crate) root: String,
    pub(crate) app: String,
    pub(crate) other: String,
}

impl Passwords {
    /// Three fresh random passwords.
    pub(crate) fn random() -> Result<Passwords> {
        Ok(Passwords {
            root: random_password()?,
            app: random_password()?,
            other: random_password()?,
        })
    }

    /// Password of `root`, `app` or `other`; `None` for any other name.
    pub(crate) fn of(&self, user: &str) -> Option<&str> {
        match user {
            "root" => Some(&self.root),
            "app" => Some(&self.app),
            "other" => Some(&self.other),
            _ => None,
        }
    }

    /// Init-file lines: `root_sql(identified(root))`, then `app`, `other` on `'%'` with all grants.
    pub(crate) fn init_sql(
        &self,
        identified: impl Fn(&str) -> String,
        root_sql: impl FnOnce(&str) -> String,
    ) -> String {
        let mut sql = root_sql(&identified(&self.root));
        for (user, password) in [("app", &self.app), ("other", &self.other)] {
            sql += &format!("CREATE USER '{user}'@'%' {};\n", identified(password));
            sql += &format!("GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%';\n");
        }
        sql
    }
}

/// Reads the first packet a server sends on `addr`, without the 4-byte header.
pub(crate) fn first_packet(addr: SocketAddr) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

/// The version a greeting from `who` announces; an error packet or anything else fails.
pub(crate) fn greeting_version(who: &str, packet: &[u8]) -> Result<String> {
    match packet.split_first() {
        Some((10, rest)) => {
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
        }
        Some((0xff, rest)) if rest.len() >= 2 => {
            let code = u16::from_le_bytes([rest[0], rest[1]]);
            let message = String::from_utf8_lossy(&rest[2..]);
            Err(anyhow!(
                "{who} refused a connection: error {code}: {message}"
            ))
        }
        _ => Err(anyhow!(
            "{who} sent an unexpected first packet: {packet:02x?}"
        )),
    }
}

/// Why a server did not start on a port.
pub(crate) enum LaunchError {
    /// Another process bound the port between `free_port` and the server's bind.
    PortTaken,
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for LaunchError {
    fn from(e: anyhow::Error) -> Self {
        LaunchError::Failed(e)
    }
}

impl From<io::Error> for LaunchError {
    fn from(e: io::Error) -> Self {
        LaunchError::Failed(e.into())
    }
}

/// Calls `launch` on ports from `next_port` until one is free; `None` after [`START_ATTEMPTS`].
pub(crate) fn on_free_port<T>(
    mut next_port: impl FnMut() -> u16,
    mut launch: impl FnMut(u16) -> Result<T, LaunchError>,
) -> Result<Option<(u16, T)>> {
    for _ in 0..START_ATTEMPTS {
        let port = next_port();
        match launch(port) {
            Ok(started) => return Ok(Some((port, started))),
            Err(LaunchError::PortTaken) => continue,
            Err(LaunchError::Failed(e)) => return Err(e),
        }
    }
    Ok(None)
}

/// Starts `cmd` with [`spawn_tied`], without stdin, its stdout and stderr going to `log`.
pub(crate) fn spawn_logged(mut cmd: Command, log: File) -> Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().context("cannot duplicate the log file")?)
        .stderr(log);
    spawn_tied(cmd)
}

/// Why `name` exited at start-up: its port was taken if `log` holds a `port_taken` marker.
pub(crate) fn exited_at_start(
    name: &str,
    status: ExitStatus,
    log: &Path,
    port_taken: &[&str],
    tail_lines: usize,
) -> LaunchError {
    let text = fs::read_to_string(log).unwrap_or_default();
    if port_taken.iter().any(|marker| text.contains(marker)) {
        return LaunchError::PortTaken;
    }
    let file = log.file_name().unwrap_or(log.as_os_str()).to_string_lossy();
    anyhow!(
        "{name} exited during start-up ({status}); {file} ends with:\n{}",
        log_tail(log, tail_lines)
    )
    .into()
}

/// SIGTERM, up to `grace` for a clean exit, then SIGKILL (at once for a zero `grace`).
pub(crate) fn stop_child(child: &mut Child, grace: Duration) -> io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    if !grace.is_zero() {
        // SAFETY: plain kill(2) on our own unreaped child, so the pid cannot have been reused.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(POLL);
        }
    }
    let _ = child.kill();
    child.wait()
}

/// A private server directory (`data`, `error.log`, `tmp`…) and its server; both go on drop.
#[derive(Debug)]
pub(crate) struct Sandbox {
    dir: PathBuf,
    child: Option<Child>,
    /// How long [`Sandbox::stop`] waits after SIGTERM before SIGKILL; zero sends SIGKILL at once.
    grace: Duration,
}

impl Sandbox {
    /// Creates `parent/PID-N`, which this process removes at exit if it is still there.
    pub(crate) fn create(parent: &Path, grace: Duration) -> Result<Sandbox> {
        let dir = create_private_dir(parent, "")?;
        register(&dir, None);
        Ok(Sandbox {
            dir,
            child: None,
            grace,
        })
    }

    /// The directory (a host path).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `name` in the directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Process id of the server, or 0 if none runs.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The server's log.
    pub(crate) fn error_log(&self) -> PathBuf {
        self.path("error.log")
    }

    /// The last lines of the server's log.
    pub(crate) fn error_log_tail(&self) -> String {
        log_tail(&self.error_log(), LOG_TAIL_LINES)
    }

    /// Fresh `data` from `template`, no log, empty `scratch` dirs: undoes any failed attempt.
    pub(crate) fn reset(&self, template: &Path, scratch: &[&str]) -> Result<()> {
        for name in std::iter::once(&"data").chain(scratch) {
            let path = self.path(name);
            if path.exists() {
                fs::remove_dir_all(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        let log = self.error_log();
        if log.exists() {
            fs::remove_file(&log).with_context(|| format!("cannot remove {}", log.display()))?;
        }
        let data = self.path("data");
        copy_dir(template, &data).with_context(|| {
            format!(
                "cannot copy the data directory template to {}",
                data.display()
            )
        })?;
        for name in scratch {
            let path = self.path(name);
            DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        Ok(())
    }

    /// Starts the server `cmd` with its output appended to the log (early messages land there).
    pub(crate) fn spawn(&mut self, cmd: Command) -> Result<()> {
        let log_path = self.error_log();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let child = spawn_logged(cmd, log)?;
        register(&self.dir, Some(child.id()));
        self.child = Some(child);
        Ok(())
    }

    /// Waits up to `limit` for `name` to greet on `port`, then fails on `init_failed` log lines.
    pub(crate) fn wait_ready(
        &mut self,
        name: &str,
        port: u16,
        limit: Duration,
        init_failed: impl Fn(&str) -> bool,
    ) -> Result<String, LaunchError> {
        let deadline = Instant::now() + limit;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            let child = self.child.as_mut().expect("spawn sets the child");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                register(&self.dir, None);
                let port_taken = ["Bind on TCP/IP port", "Address already in use"];
                return Err(exited_at_start(
                    name,
                    status,
                    &self.error_log(),
                    &port_taken,
                    LOG_TAIL_LINES,
                ));
            }
            // The log line proves that *this* server bound the port, not a stranger on it.
            let log = fs::read_to_string(self.error_log()).unwrap_or_default();
            let ready = log.contains("ready for connections");
            if let Some(packet) = ready.then(|| first_packet(addr).ok()).flatten() {
                // Servers log a failing init-file statement and carry on.
                let version = greeting_version(name, &packet)?;
                let failed: Vec<&str> = log.lines().filter(|l| init_failed(l)).collect();
                if !failed.is_empty() {
                    return Err(anyhow!("setting up users failed:\n{}", failed.join("\n")).into());
                }
                return Ok(version);
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(anyhow!(
                    "{name} did not accept connections on {addr} within {limit:?}; error.log \
                     ends with:\n{}",
                    self.error_log_tail()
                )
                .into());
            }
            thread::sleep(POLL);
        }
    }

    /// Waits up to `limit` for a restarted server to greet on `port` again: its log already
    /// holds the first start's "ready" line, so the new one is counted.
    pub(crate) fn wait_ready_again(
        &mut self,
        name: &str,
        port: u16,
        limit: Duration,
    ) -> Result<String, LaunchError> {
        let deadline = Instant::now() + limit;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let ready_lines = |log: &str| log.matches("ready for connections").count();
        let before = ready_lines(&fs::read_to_string(self.error_log()).unwrap_or_default());
        loop {
            let child = self.child.as_mut().expect("spawn sets the child");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                register(&self.dir, None);
                let port_taken = ["Bind on TCP/IP port", "Address already in use"];
                return Err(exited_at_start(
                    name,
                    status,
                    &self.error_log(),
                    &port_taken,
                    LOG_TAIL_LINES,
                ));
            }
            let log = fs::read_to_string(self.error_log()).unwrap_or_default();
            if ready_lines(&log) > before
                && let Ok(packet) = first_packet(addr)
            {
                return Ok(greeting_version(name, &packet)?);
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(anyhow!(
                    "{name} did not accept connections again on {addr} within {limit:?}; \
                     error.log ends with:\n{}",
                    self.error_log_tail()
                )
                .into());
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills the server with SIGKILL at once and reaps it.
    pub(crate) fn kill_now(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        register(&self.dir, None);
        let _ = stop_child(&mut child, Duration::ZERO);
    }

    /// Stops the server, if one runs: see [`stop_child`].
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Forget the pid before reaping it, so the atexit hook can never signal a reused pid.
        register(&self.dir, None);
        let _ = stop_child(&mut child, self.grace);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
        unregister(&self.dir);
    }
}

/// Directories to remove, and servers to kill, when the process exits.
static LIVE: Mutex<Vec<(PathBuf, Option<u32>)>> = Mutex::new(Vec::new());

/// Removes `dir` at exit, after killing `pid` (an unreaped child); replaces an earlier entry.
pub(crate) fn register(dir: &Path, pid: Option<u32>) {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        // SAFETY: registers a plain extern "C" function; failure only means a leftover
        // directory, which the next run removes.
        unsafe { libc::atexit(cleanup_at_exit) };
    });
    let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    match live.iter_mut().find(|(d, _)| d == dir) {
        Some(entry) => entry.1 = pid,
        None => live.push((dir.to_owned(), pid)),
    }
}

/// Forgets `dir`: its owner has removed it.
pub(crate) fn unregister(dir: &Path) {
    LIVE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|(d, _)| d != dir);
}

/// Kills the servers still running and removes all registered directories: statics never drop.
extern "C" fn cleanup_at_exit() {
    let mut live = match LIVE.try_lock() {
        Ok(live) => live,
        Err(TryLockError::Poisoned(live)) => live.into_inner(),
        // Another thread is mid-update; PDEATHSIG and the next run's cleanup cover it.
        Err(TryLockError::WouldBlock) => return,
    };
    for (dir, pid) in live.drain(..) {
        if let Some(pid) = pid {
            // SAFETY: `pid` is an unreaped child of ours, so it cannot have been reused.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Checks the sandbox servers' tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use mysql_async::prelude::Queryable;

    /// `CURRENT_USER()` for a login with `opts`, or the login's error.
    pub async fn current_user(
        opts: mysql_async::OptsBuilder,
    ) -> Result<String, mysql_async::Error> {
        let mut conn = mysql_async::Conn::new(opts).await?;
        let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await?;
        conn.disconnect().await?;
        Ok(who.unwrap_or_default())
    }

    /// The server error code of a failed login.
    pub fn server_code(result: Result<String, mysql_async::Error>) -> u16 {
        match result {
            Err(mysql_async::Error::Server(e)) => e.code,
            other => panic!("expected a server error, got {other:?}"),
        }
    }
}

//! Child processes for tests: locating programs, tying children to this process, timeouts.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// How often bounded waits poll a child or a socket.
pub(crate) const POLL: Duration = Duration::from_millis(10);

/// Finds `name` on `PATH`, then in `/usr/sbin` and `/usr/bin` (often missing from the `PATH` of
/// unprivileged users); the error names the command `install` that provides it.
pub fn find_program(name: &str, install: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs =
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")]);
    for dir in dirs {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    bail!("`{name}` not found on PATH, in /usr/sbin or in /usr/bin; install it with: {install}")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the kernel sends it SIGKILL when this process ends, however it ends.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so every such child
/// is forked by one thread that lives as long as the process. Use this for servers a test
/// starts (databases, the proxy binary, mock services) so that a killed test run leaks none.
pub fn spawn_tied(mut cmd: Command) -> Result<Child> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(io::Error::other("parent exited before exec"));
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .send((cmd, reply_tx))
        .map_err(|_| anyhow!("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .context("the spawner thread dropped the request")?
        .with_context(|| format!("cannot start `{program}`"))
}

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so `recv` never fails and this thread never
                // exits while the process runs: exactly what PDEATHSIG needs.
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
                loop {
                    thread::park();
                }
            })
            .expect("cannot start the testkit spawner thread");
        tx
    })
}

/// Whether process `pid` exists and is not a zombie.
///
/// Zombies count as gone: in containers PID 1 often does not reap orphans.
pub fn pid_running(pid: u32) -> bool {
    match stat_fields(pid) {
        Some(fields) => fields
            .first()
            .is_none_or(|state| state != "Z" && state != "X"),
        None => false,
    }
}

/// The fields of `/proc/PID/stat` after the command name, from the state (field 3) on;
/// `None` if the process does not exist.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The parenthesised command name may itself hold ')' and spaces.
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User plus system CPU time process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let fields = stat_fields(pid).ok_or_else(|| anyhow!("process {pid} is gone"))?;
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the state.
    let ticks = |i: usize| -> Result<f64> {
        let field = fields
            .get(i)
            .ok_or_else(|| anyhow!("/proc/{pid}/stat is too short"))?;
        Ok(field.parse::<f64>()?)
    };
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// Runs `cmd` to completion with `stdin` as its input, killing it after `timeout`.
///
/// Clients under test may hang on a faulty proxy; a bounded wait turns that into an error
/// that shows what the client printed so far.
pub fn output_with_timeout(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{program}`"))?;

    // Feed stdin and drain the pipes on their own threads so a chatty child cannot block.
    let writer = match (child.stdin.take(), stdin) {
        (Some(mut pipe), Some(data)) => {
            let data = data.to_vec();
            Some(thread::spawn(move || {
                // A child that exits without reading all its input is not an error here.
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());

    let deadline = Instant::now() + timeout;
    let status: Option<ExitStatus> = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(POLL);
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "`{program}` did not finish within {timeout:?} and was killed\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Fails unless `output` reports success; the error shows the command's stderr.
pub(crate) fn check_success(what: impl AsRef<OsStr>, output: &Output) -> Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "`{}` failed ({}):\n{}{}",
        what.as_ref().to_string_lossy(),
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_names_install_command() {
        let err = find_program("no-such-program-sluice", "apt-get install -y nothing").unwrap_err();
        assert!(
            err.to_string().contains("apt-get install -y nothing"),
            "{err}"
        );
    }

    #[test]
    fn timeout_kills_and_reports_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let started = Instant::now();
        let err = output_with_timeout(cmd, None, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("started"), "{err}");
    }

    #[test]
    fn stdin_is_fed() {
        let out = output_with_timeout(Command::new("cat"), Some(b"hello"), Duration::from_secs(10))
            .unwrap();
        assert_eq!(out.stdout, b"hello");
    }

    #[test]
    fn tied_child_runs_and_is_reaped() {
        let mut cmd = Command::new("true");
        cmd.stdin(Stdio::null());
        let mut child = spawn_tied(cmd).unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success());
        assert!(!pid_running(pid));
        assert!(pid_running(std::process::id()));
    }
}

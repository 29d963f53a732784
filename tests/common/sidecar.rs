//! Starts the real `auth-sidecar` binary with a config written into a tempdir, learns its
//! ports from the JSON `listening` log lines, keeps every output line for log audits and
//! kills the child on Drop.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::config::Cfg;

/// Path of the binary under test: cargo's build of this crate, or another build of the same
/// tree given in `SIDECAR_TEST_BIN` (a release or PGO build: `benches/pgo.sh`).
pub fn bin() -> String {
    std::env::var("SIDECAR_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_auth-sidecar").into())
}

/// How long the binary may take to report that it listens.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running sidecar. Dropping it kills the process.
pub struct Sidecar {
    child: Option<Child>,
    /// The proxy listener.
    pub addr: SocketAddr,
    /// The admin listener, when the config has one.
    pub admin: Option<SocketAddr>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    /// stdout lines as they come (kept only by [`Sidecar::spawn`]).
    lines: Option<mpsc::Receiver<String>>,
    /// The tempdir (with config.toml, when there is a config); kept alive as long as the
    /// process.
    pub dir: tempfile::TempDir,
    pub config_text: String,
}

/// Why a sidecar did not come up.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    pub output: String,
}

fn base_command(dir: &std::path::Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.current_dir(dir);
    // The developer's shell must not change what the tests run: no config overrides, no
    // RUST_LOG overriding [log].
    for (k, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
        if k.starts_with("AUTH_SIDECAR") || k == "RUST_LOG" {
            cmd.env_remove(&k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn spawn_reader<R: Read + Send + 'static>(
    r: R,
    store: Arc<Mutex<Vec<String>>>,
    tx: Option<mpsc::Sender<String>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    store.lock().unwrap().push(line.clone());
                    if let Some(tx) = &tx {
                        let _ = tx.send(line);
                    }
                }
            }
        }
    })
}

/// `fields.<key>` of a JSON log line, or a top-level `<key>` (flattened events).
pub fn log_field(line: &serde_json::Value, key: &str) -> Option<String> {
    let v = line
        .get("fields")
        .and_then(|f| f.get(key))
        .or_else(|| line.get(key))?;
    Some(match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// How to run the binary: its arguments, environment and working directory, an
/// optional config text (written to `config.toml` in the tempdir and passed as
/// `--config PATH` after `args`), and whether to wait for the admin listener too.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Working directory; the tempdir when `None`.
    pub cwd: Option<PathBuf>,
    pub config: Option<String>,
    pub want_admin: bool,
}

impl Launch {
    /// `auth-sidecar --config <tempdir>/config.toml` with the text and env of `cfg`.
    pub fn config(cfg: &Cfg) -> Launch {
        Launch {
            args: Vec::new(),
            env: cfg.env.clone(),
            cwd: None,
            config: Some(cfg.render()),
            want_admin: cfg.admin,
        }
    }

    /// `auth-sidecar ARGS...` (e.g. `demo`, or `--config examples/x.toml`).
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(args: I) -> Launch {
        Launch {
            args: args.into_iter().map(Into::into).collect(),
            ..Launch::default()
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn envs(mut self, pairs: &[(String, String)]) -> Launch {
        for (k, v) in pairs {
            self = self.env(k, v);
        }
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Launch {
        self.cwd = Some(dir.into());
        self
    }
}

impl Sidecar {
    /// Starts the sidecar; panics with its output if it does not come up.
    pub async fn start(cfg: &Cfg) -> Sidecar {
        Self::launch(Launch::config(cfg)).await
    }

    /// Starts the sidecar, or reports how it failed to.
    pub async fn try_start(cfg: &Cfg) -> Result<Sidecar, StartFailure> {
        Self::try_launch(Launch::config(cfg)).await
    }

    /// Runs the binary as `launch` says and waits for its `listening` line (and
    /// `admin listening` when asked); panics with its output if it does not come up.
    pub async fn launch(launch: Launch) -> Sidecar {
        let what = format!("{:?}", launch.args);
        let config = launch.config.clone().unwrap_or_default();
        match Self::try_launch(launch).await {
            Ok(s) => s,
            Err(f) => panic!(
                "sidecar {what} did not start (exit: {:?})\n--- config ---\n{config}\n--- output ---\n{}",
                f.status, f.output
            ),
        }
    }

    /// [`Sidecar::launch`], or how the start failed.
    pub async fn try_launch(launch: Launch) -> Result<Sidecar, StartFailure> {
        tokio::task::spawn_blocking(move || {
            let want_admin = launch.want_admin;
            let mut sc = Self::spawn_blocking(launch);
            let r = sc.wait_listening(want_admin);
            r.map(|()| {
                // Lines are kept in `stdout`; nobody reads the channel any more.
                sc.lines = None;
                sc
            })
        })
        .await
        .expect("spawn_blocking")
    }

    /// Runs the binary as `launch` says without waiting for anything: `addr` is unset and
    /// stdout lines can be read as they come with [`Sidecar::next_line`].
    pub async fn spawn(launch: Launch) -> Sidecar {
        tokio::task::spawn_blocking(move || Self::spawn_blocking(launch))
            .await
            .expect("spawn_blocking")
    }

    fn spawn_blocking(launch: Launch) -> Sidecar {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = base_command(launch.cwd.as_deref().unwrap_or(dir.path()), &launch.env);
        cmd.args(&launch.args);
        if let Some(text) = &launch.config {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, text).expect("write config");
            cmd.arg("--config").arg(&path);
        }
        let text = launch.config.unwrap_or_default();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn auth-sidecar");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let readers = vec![
            spawn_reader(child.stdout.take().unwrap(), stdout.clone(), Some(tx)),
            spawn_reader(child.stderr.take().unwrap(), stderr.clone(), None),
        ];
        Sidecar {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            stdout,
            stderr,
            readers,
            lines: Some(rx),
            dir,
            config_text: text,
        }
    }

    /// The next stdout line, waiting at most until `deadline`; `None` on timeout or
    /// when stdout closed. Only for a sidecar from [`Sidecar::spawn`].
    pub fn next_line(&self, deadline: Instant) -> Option<String> {
        let rx = self
            .lines
            .as_ref()
            .expect("lines are only kept by Sidecar::spawn");
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    }

    /// Reads stdout until the `listening` line (and `admin listening` if `want_admin`),
    /// bounded by [`START_TIMEOUT`]; on failure the process is gone.
    fn wait_listening(&mut self, want_admin: bool) -> Result<(), StartFailure> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut addr = None;
        let mut admin = None;
        while addr.is_none() || (want_admin && admin.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = self.lines.as_ref().expect("lines").recv_timeout(left);
            match got {
                Ok(line) => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    let msg = log_field(&v, "message").unwrap_or_default();
                    let Some(a) = log_field(&v, "addr").and_then(|a| a.parse::<SocketAddr>().ok())
                    else {
                        continue;
                    };
                    match msg.as_str() {
                        "listening" => addr = Some(a),
                        "admin listening" => admin = Some(a),
                        _ => {}
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let status = self.kill();
                    return Err(StartFailure {
                        status,
                        output: format!(
                            "(no `listening` line within {START_TIMEOUT:?})\n{}",
                            self.logs()
                        ),
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting.
                    let status = self.wait_exit(Duration::from_secs(10));
                    self.join_readers();
                    return Err(StartFailure {
                        status,
                        output: self.logs(),
                    });
                }
            }
        }
        self.addr = addr.unwrap();
        self.admin = admin;
        Ok(())
    }

    /// `http://<proxy addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `ws://<proxy addr><path>`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// `http://<admin addr><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin.expect("no admin listener"), path)
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The stdout lines so far that are JSON log lines.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// stdout and stderr so far, as one text.
    pub fn logs(&self) -> String {
        let mut s = self.stdout.lock().unwrap().join("\n");
        s.push_str("\n--- stderr ---\n");
        s.push_str(&self.stderr.lock().unwrap().join("\n"));
        s
    }

    /// The process id (for signals).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends signal `sig` (e.g. `HUP`) with the `kill` command (no libc); panics if the
    /// process is gone or `kill` fails.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().expect("the sidecar is not running");
        let st = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {pid} failed");
    }

    /// Whether the process still exists (`kill -0`).
    pub fn is_alive(&self) -> bool {
        self.pid().is_some_and(|pid| {
            Command::new("kill")
                .args(["-0", &pid.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
    }

    /// SIGTERM, then wait (bounded, 10 s) for the exit and for every output line to be
    /// read; SIGKILL if it does not exit. Needs a multi-threaded test runtime.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let pid = self.pid()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        tokio::task::block_in_place(|| {
            let s = self
                .wait_exit(Duration::from_secs(10))
                .or_else(|| self.kill());
            self.join_readers();
            s
        })
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS` from /proc), 0 if unknown.
pub fn vm_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Output of a process that ran to completion.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs the binary with `args` (the config path is appended as `--config PATH` after
/// them) to completion, bounded by 20 s; the child is killed if it does not exit.
pub async fn run_to_exit(
    cfg_text: &str,
    args: &[&str],
    env: &[(String, String)],
) -> (Finished, tempfile::TempDir) {
    let mut launch = Launch::args(args.iter().copied()).envs(env);
    launch.config = Some(cfg_text.to_string());
    finish(launch).await
}

/// Runs the binary as `launch` says to completion, bounded by 20 s; the child is killed
/// if it does not exit. Returns its output and the tempdir it ran in.
pub async fn finish(launch: Launch) -> (Finished, tempfile::TempDir) {
    tokio::task::spawn_blocking(move || {
        let args = launch.args.clone();
        let mut sc = Sidecar::spawn_blocking(launch);
        let deadline = Instant::now() + Duration::from_secs(20);
        let Some(status) = sc.wait_exit(deadline.saturating_duration_since(Instant::now())) else {
            sc.kill();
            sc.join_readers();
            panic!(
                "auth-sidecar {args:?} did not exit within 20 s\n--- stdout ---\n{}\n--- stderr ---\n{}",
                sc.stdout.lock().unwrap().join("\n"),
                sc.stderr.lock().unwrap().join("\n")
            );
        };
        sc.join_readers();
        let stdout = sc.stdout.lock().unwrap().join("\n");
        let stderr = sc.stderr.lock().unwrap().join("\n");
        let dir = tempfile::tempdir().expect("tempdir");
        let dir = std::mem::replace(&mut sc.dir, dir);
        (Finished { status, stdout, stderr }, dir)
    })
    .await
    .unwrap()
}

/// `auth-sidecar check-config --config PATH` with the config `cfg`.
pub async fn check_config(cfg: &Cfg) -> Finished {
    run_to_exit(&cfg.render(), &["check-config"], &cfg.env)
        .await
        .0
}

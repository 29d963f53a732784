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

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_auth-sidecar");

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
    /// The tempdir with config.toml; kept alive as long as the process.
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
    let mut cmd = Command::new(BIN);
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

fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
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

impl Sidecar {
    /// Starts the sidecar; panics with its output if it does not come up.
    pub async fn start(cfg: &Cfg) -> Sidecar {
        match Self::try_start(cfg).await {
            Ok(s) => s,
            Err(f) => panic!(
                "sidecar did not start (exit: {:?})\n--- config ---\n{}\n--- output ---\n{}",
                f.status,
                cfg.render(),
                f.output
            ),
        }
    }

    /// Starts the sidecar, or reports how it failed to.
    pub async fn try_start(cfg: &Cfg) -> Result<Sidecar, StartFailure> {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || Self::start_blocking(&cfg))
            .await
            .expect("spawn_blocking")
    }

    fn start_blocking(cfg: &Cfg) -> Result<Sidecar, StartFailure> {
        let text = cfg.render();
        let (dir, path) = write_config(&text);
        let mut cmd = base_command(dir.path(), &cfg.env);
        cmd.arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
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
        let want_admin = cfg.admin;
        let deadline = Instant::now() + START_TIMEOUT;
        let mut addr = None;
        let mut admin = None;
        let mut sc = Sidecar {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            stdout,
            stderr,
            readers,
            dir,
            config_text: text,
        };
        while addr.is_none() || (want_admin && admin.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
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
                    let status = sc.kill();
                    return Err(StartFailure {
                        status,
                        output: format!(
                            "(no `listening` line within {START_TIMEOUT:?})\n{}",
                            sc.logs()
                        ),
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting.
                    let status = sc.wait_exit(Duration::from_secs(10));
                    sc.join_readers();
                    return Err(StartFailure {
                        status,
                        output: sc.logs(),
                    });
                }
            }
        }
        sc.addr = addr.unwrap();
        sc.admin = admin;
        Ok(sc)
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
    let cfg_text = cfg_text.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env = env.to_vec();
    tokio::task::spawn_blocking(move || {
        let (dir, path) = write_config(&cfg_text);
        let mut cmd = base_command(dir.path(), &env);
        cmd.args(&args)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn auth-sidecar");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let r1 = spawn_reader(child.stdout.take().unwrap(), out.clone(), None);
        let r2 = spawn_reader(child.stderr.take().unwrap(), err.clone(), None);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = r1.join();
                let _ = r2.join();
                panic!(
                    "auth-sidecar {args:?} did not exit within 20 s\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    out.lock().unwrap().join("\n"),
                    err.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = r1.join();
        let _ = r2.join();
        let stdout = out.lock().unwrap().join("\n");
        let stderr = err.lock().unwrap().join("\n");
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

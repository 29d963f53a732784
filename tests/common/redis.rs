//! A real `redis-server` for the shared-store suites: 127.0.0.1 on a free port, no
//! persistence, its own tempdir; killed on Drop. Faults: [`RedisServer::kill`]
//! (SIGKILL), [`RedisServer::stop`] / [`RedisServer::cont`] (SIGSTOP / SIGCONT: hung, the
//! socket still accepts), [`RedisServer::restart`] (same port, empty). Observations over
//! a plain RESP client on a `TcpStream`: `INFO commandstats`, `CONFIG RESETSTAT`, and a
//! dump of every key with its value and TTL.
//!
//! Without `redis-server` on the PATH (or at `REDIS_SERVER`) every test that needs it
//! fails with a message saying so: CI installs the Debian package; nothing is skipped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::{free_port, listens};

/// A reply, as RESP2 gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// Bytes of a bulk or status reply.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Reply::Bulk(Some(b)) => b.clone(),
            Reply::Status(s) => s.as_bytes().to_vec(),
            other => panic!("not a bulk reply: {other:?}"),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(i) => *i,
            other => panic!("not an integer reply: {other:?}"),
        }
    }

    pub fn array(&self) -> Vec<Reply> {
        match self {
            Reply::Array(Some(v)) => v.clone(),
            other => panic!("not an array reply: {other:?}"),
        }
    }
}

/// One key of a [`RedisServer::dump`].
#[derive(Clone, Debug)]
pub struct Entry {
    pub key: Vec<u8>,
    /// `string`, `hash`, `list`, `set`, `zset`, `stream`…
    pub kind: String,
    /// The value's bytes (for aggregates: every member and field, concatenated with `\n`).
    pub value: Vec<u8>,
    /// PTTL: -1 no expiry, -2 gone.
    pub pttl_ms: i64,
}

/// A running `redis-server`.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: String,
}

fn redis_bin() -> String {
    let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    match Command::new(&bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => bin,
        other => panic!(
            "`{bin}` is not runnable ({other:?}): the shared-store tests need a real Redis. \
             Install it (Debian: `apt-get install redis-server`, as .ci/run does) or point \
             REDIS_SERVER at the binary"
        ),
    }
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING (at most 10 s).
    pub fn start() -> RedisServer {
        let bin = redis_bin();
        let dir = tempfile::tempdir().expect("tempdir for redis");
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            dir,
            bin,
        };
        r.spawn(false);
        r
    }

    /// Runs the server on `self.port` (`same_port`: keep it; else a port taken meanwhile
    /// makes it try another).
    fn spawn(&mut self, same_port: bool) {
        let mut last = String::new();
        for attempt in 0..20 {
            let child = Command::new(&self.bin)
                .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
                .args(["--port", &self.port.to_string()])
                .arg("--dir")
                .arg(self.dir.path())
                .args(["--daemonize", "no", "--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin));
            self.child = Some(child);
            match self.wait_ping(Duration::from_secs(10)) {
                Ok(()) => return,
                Err(e) => {
                    let out = self.reap_output();
                    last = format!("{e}; output: {out}");
                    if !same_port {
                        self.port = free_port();
                    }
                    std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
                }
            }
        }
        panic!("redis-server did not start on port {}: {last}", self.port);
    }

    fn reap_output(&mut self) -> String {
        let Some(mut c) = self.child.take() else {
            return String::new();
        };
        let _ = c.kill();
        let _ = c.wait();
        let mut s = String::new();
        if let Some(mut o) = c.stdout.take() {
            let _ = o.read_to_string(&mut s);
        }
        if let Some(mut e) = c.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    fn wait_ping(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    return Err(format!("redis-server exited: {st}"));
                }
            }
            // Another test's Redis may hold the port this one was given (and answer PONG):
            // only this child listening on it counts.
            let pid = self.child.as_ref().map(|c| c.id());
            let ours = pid.is_some_and(|pid| listens(pid, self.port));
            match self.try_cmd(&["PING"], Duration::from_millis(500)) {
                Ok(Reply::Status(s)) if s == "PONG" => {
                    if ours {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        return Err("PONG from a server that is not this redis-server".into());
                    }
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(other) => return Err(format!("PING answered {other:?}")),
                Err(e) if Instant::now() >= deadline => return Err(format!("no PONG: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("redis-server is not running")
            .id()
    }

    /// SIGKILL, and waits for the process to be gone (the port is closed after this).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} redis-server failed");
    }

    /// SIGSTOP: the server hangs (connections are still accepted by the kernel).
    pub fn stop(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`stop`](Self::stop).
    pub fn cont(&self) {
        self.signal("CONT");
    }

    /// Kills the server (if it runs) and starts a fresh, empty one on the same port.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            // A stopped process gets SIGKILL too; no need to continue it first.
            self.kill();
        }
        self.spawn(true);
    }

    /// One command over a fresh connection; panics on an I/O error or an error reply.
    pub fn cmd(&self, args: &[&str]) -> Reply {
        match self.try_cmd(args, Duration::from_secs(5)) {
            Ok(Reply::Error(e)) => panic!("redis {args:?}: {e}"),
            Ok(r) => r,
            Err(e) => panic!("redis {args:?}: {e}"),
        }
    }

    /// Several commands over one connection.
    pub fn cmds(&self, cmds: &[Vec<Vec<u8>>]) -> Vec<Reply> {
        let mut c = Conn::open(self.addr(), Duration::from_secs(5)).expect("connect to redis");
        cmds.iter()
            .map(|a| c.call(a).unwrap_or_else(|e| panic!("redis: {e}")))
            .collect()
    }

    pub fn try_cmd(&self, args: &[&str], timeout: Duration) -> std::io::Result<Reply> {
        let mut c = Conn::open(self.addr(), timeout)?;
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        c.call(&args)
    }

    /// `INFO commandstats` as command name (lowercase, e.g. `evalsha`, `config|resetstat`)
    /// -> calls.
    pub fn commandstats(&self) -> BTreeMap<String, u64> {
        let info = self.cmd(&["INFO", "commandstats"]).text();
        let mut out = BTreeMap::new();
        for line in info.lines() {
            let Some(rest) = line.strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, fields)) = rest.split_once(':') else {
                continue;
            };
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            out.insert(name.to_ascii_lowercase(), calls);
        }
        out
    }

    /// [`commandstats`](Self::commandstats) without the commands the tests themselves
    /// send to observe (`info`, `config|*`, `ping`, `scan`, `type`, `pttl`, …).
    pub fn commandstats_from_clients(&self) -> BTreeMap<String, u64> {
        self.commandstats()
            .into_iter()
            .filter(|(k, _)| {
                !(k == "info" || k == "ping" || k.starts_with("config") || k == "command")
            })
            .collect()
    }

    /// `CONFIG RESETSTAT`.
    pub fn config_resetstat(&self) {
        assert_eq!(
            self.cmd(&["CONFIG", "RESETSTAT"]),
            Reply::Status("OK".into())
        );
    }

    /// Every key (SCAN), its type, value and PTTL.
    pub fn dump(&self) -> Vec<Entry> {
        let mut c = Conn::open(self.addr(), Duration::from_secs(5)).expect("connect to redis");
        let b = |s: &str| s.as_bytes().to_vec();
        let mut keys = Vec::new();
        let mut cursor = b"0".to_vec();
        loop {
            let r = c
                .call(&[b("SCAN"), cursor.clone(), b("COUNT"), b("1000")])
                .expect("SCAN")
                .array();
            cursor = r[0].bytes();
            keys.extend(r[1].array().iter().map(Reply::bytes));
            if cursor == b"0" {
                break;
            }
        }
        let mut out = Vec::new();
        for key in keys {
            let kind = c.call(&[b("TYPE"), key.clone()]).expect("TYPE").text();
            let join = |items: Vec<Reply>| -> Vec<u8> {
                items
                    .iter()
                    .filter_map(|r| match r {
                        Reply::Bulk(Some(v)) => Some(v.clone()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join(&b'\n')
            };
            let value = match kind.as_str() {
                "string" => match c.call(&[b("GET"), key.clone()]).expect("GET") {
                    Reply::Bulk(Some(v)) => v,
                    _ => Vec::new(),
                },
                "hash" => join(
                    c.call(&[b("HGETALL"), key.clone()])
                        .expect("HGETALL")
                        .array(),
                ),
                "list" => join(
                    c.call(&[b("LRANGE"), key.clone(), b("0"), b("-1")])
                        .expect("LRANGE")
                        .array(),
                ),
                "set" => join(
                    c.call(&[b("SMEMBERS"), key.clone()])
                        .expect("SMEMBERS")
                        .array(),
                ),
                "zset" => join(
                    c.call(&[b("ZRANGE"), key.clone(), b("0"), b("-1")])
                        .expect("ZRANGE")
                        .array(),
                ),
                // Anything else (a stream): its serialized form holds every byte.
                _ => match c.call(&[b("DUMP"), key.clone()]).expect("DUMP") {
                    Reply::Bulk(Some(v)) => v,
                    _ => Vec::new(),
                },
            };
            let pttl = c.call(&[b("PTTL"), key.clone()]).expect("PTTL").int();
            out.push(Entry {
                key,
                kind,
                value,
                pttl_ms: pttl,
            });
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped process dies of SIGKILL as well.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A blocking RESP2 connection.
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    fn call(&mut self, args: &[Vec<u8>]) -> std::io::Result<Reply> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&buf)?;
        self.read()
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut l = Vec::new();
        self.r.read_until(b'\n', &mut l)?;
        if !l.ends_with(b"\r\n") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed mid-reply",
            ));
        }
        l.truncate(l.len() - 2);
        Ok(String::from_utf8_lossy(&l).into_owned())
    }

    fn read(&mut self) -> std::io::Result<Reply> {
        let l = self.line()?;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad RESP");
        let (t, rest) = l.split_at_checked(1).ok_or_else(bad)?;
        Ok(match t {
            "+" => Reply::Status(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut v = vec![0u8; n as usize + 2];
                    self.r.read_exact(&mut v)?;
                    v.truncate(n as usize);
                    Reply::Bulk(Some(v))
                }
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    Reply::Array(None)
                } else {
                    let mut v = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        v.push(self.read()?);
                    }
                    Reply::Array(Some(v))
                }
            }
            _ => return Err(bad()),
        })
    }
}

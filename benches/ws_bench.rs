//! WebSocket load tools for benches/ws.sh (an example, so the binary has a stable path):
//!
//!     ws_bench echo ADDR                         echo backend (current-thread runtime)
//!     ws_bench idle URL N HOLD_S [TOKEN]         open N upgraded connections, print
//!                                                `OPEN n` once all are up, hold HOLD_S s
//!     ws_bench load URL CONNS SECS [TOKEN]       small-message echo: each connection sends
//!                                                32 bytes and waits for the echo; prints
//!                                                `MSGS n SECS s RATE r ERRORS e`
//!
//! Client sockets bind to the source addresses in `WS_SOURCES` (comma-separated,
//! default 127.0.0.2..127.0.0.5), round-robin, so 8 000 connections do not exhaust one
//! address's ephemeral ports. Every client mode is bounded in time (`WS_CONNECT_S`, 60,
//! for opening; then HOLD_S or SECS). TOKEN goes in `Authorization: Bearer`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;
type BoxErr = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxErr> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("echo") if args.len() == 2 => rt.block_on(echo(args[1].parse()?)),
        Some("idle") if args.len() >= 4 => rt.block_on(idle(
            &args[1],
            args[2].parse()?,
            args[3].parse()?,
            args.get(4).cloned(),
        )),
        Some("load") if args.len() >= 4 => rt.block_on(load(
            &args[1],
            args[2].parse()?,
            args[3].parse()?,
            args.get(4).cloned(),
        )),
        _ => {
            eprintln!("usage: ws_bench echo ADDR | idle URL N HOLD_S [TOKEN] | load URL CONNS SECS [TOKEN]");
            std::process::exit(2);
        }
    }
}

async fn echo(addr: SocketAddr) -> Result<(), BoxErr> {
    let l = TcpListener::bind(addr).await?;
    loop {
        let (s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                return;
            };
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    break;
                }
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn sources() -> Vec<IpAddr> {
    let v = std::env::var("WS_SOURCES")
        .unwrap_or_else(|_| "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5".into());
    v.split(',').filter_map(|s| s.trim().parse().ok()).collect()
}

async fn connect(url: &str, src: IpAddr, token: Option<&str>) -> Result<Ws, BoxErr> {
    let mut req = url.into_client_request()?;
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    let host = req.uri().host().ok_or("no host")?.to_string();
    let port = req.uri().port_u16().unwrap_or(80);
    let dst: SocketAddr = (host.parse::<IpAddr>()?, port).into();
    let sock = TcpSocket::new_v4()?;
    sock.bind((src, 0).into())?;
    let s = sock.connect(dst).await?;
    let _ = s.set_nodelay(true);
    let (ws, resp) = tokio_tungstenite::client_async(req, s).await?;
    if resp.status() != 101 {
        return Err(format!("status {}", resp.status()).into());
    }
    Ok(ws)
}

/// Opens `n` connections, at most 256 handshakes at a time.
async fn open_all(url: &str, n: usize, token: Option<String>) -> Result<Vec<Ws>, BoxErr> {
    let srcs = sources();
    let limit = Duration::from_secs(
        std::env::var("WS_CONNECT_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (url, token, src, sem) = (
            url.to_string(),
            token.clone(),
            srcs[i % srcs.len()],
            sem.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            connect(&url, src, token.as_deref()).await
        }));
    }
    let all = async {
        let mut out = Vec::with_capacity(n);
        let mut errs = 0usize;
        let mut first = None;
        for t in tasks {
            match t.await {
                Ok(Ok(ws)) => out.push(ws),
                Ok(Err(e)) => {
                    errs += 1;
                    first.get_or_insert(e.to_string());
                }
                Err(e) => {
                    errs += 1;
                    first.get_or_insert(e.to_string());
                }
            }
        }
        (out, errs, first)
    };
    let (out, errs, first) = tokio::time::timeout(limit, all)
        .await
        .map_err(|_| "opening timed out")?;
    if errs > 0 {
        eprintln!(
            "{errs} connection(s) failed; first: {}",
            first.unwrap_or_default()
        );
    }
    Ok(out)
}

async fn idle(url: &str, n: usize, hold_s: u64, token: Option<String>) -> Result<(), BoxErr> {
    let t0 = Instant::now();
    let mut conns = open_all(url, n, token).await?;
    // One round trip on each proves every tunnel is through (and leaves them idle).
    let mut ok = 0usize;
    let check = async {
        for ws in conns.iter_mut() {
            if ws.send(Message::binary(vec![7u8; 16])).await.is_ok()
                && matches!(ws.next().await, Some(Ok(Message::Binary(_))))
            {
                ok += 1;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), check)
        .await
        .is_err()
    {
        eprintln!("echo check timed out");
    }
    println!(
        "OPEN {} ECHOED {} IN {:.1}s",
        conns.len(),
        ok,
        t0.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(hold_s)).await;
    drop(conns);
    Ok(())
}

async fn load(url: &str, n: usize, secs: u64, token: Option<String>) -> Result<(), BoxErr> {
    let conns = open_all(url, n, token).await?;
    let msgs = Arc::new(AtomicU64::new(0));
    let errs = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for mut ws in conns {
        let (msgs, errs) = (msgs.clone(), errs.clone());
        tasks.push(tokio::spawn(async move {
            let payload = bytes_payload();
            while Instant::now() < end {
                let step = async {
                    ws.send(Message::binary(payload.clone())).await?;
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Binary(_))) => return Ok::<_, BoxErr>(()),
                            Some(Ok(_)) => continue,
                            Some(Err(e)) => return Err(e.into()),
                            None => return Err("closed".into()),
                        }
                    }
                };
                match tokio::time::timeout_at(end.into(), step).await {
                    Ok(Ok(())) => {
                        msgs.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(_)) => {
                        errs.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let el = start.elapsed().as_secs_f64();
    let m = msgs.load(Ordering::Relaxed);
    println!(
        "MSGS {m} SECS {el:.2} RATE {:.0} ERRORS {}",
        m as f64 / el,
        errs.load(Ordering::Relaxed)
    );
    Ok(())
}

fn bytes_payload() -> bytes::Bytes {
    bytes::Bytes::from_static(&[b'x'; 32])
}

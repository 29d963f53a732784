//! Slow clients on the real binary: a request body dripped slower than
//! `server.body_read_timeout`, and a client that never reads its response, are cut off,
//! and neither holds the backend connection behind it.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::read_response;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that counts its open connections: `/big` answers 256 MiB, anything else
/// reads its whole body (Content-Length) and answers 200.
struct Counting {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
}

async fn counting_backend() -> Counting {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let o = open.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let o = o.clone();
            o.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = serve_one(&mut s).await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Counting { addr, open }
}

async fn serve_one(s: &mut TcpStream) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            return Ok(());
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if head.starts_with("get /big") {
        let total: usize = 256 << 20;
        s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n\r\n").as_bytes())
            .await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..total / chunk.len() {
            s.write_all(&chunk).await?;
        }
        return Ok(());
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await?;
    // Wait for the peer to go.
    let _ = s.read(&mut b).await;
    Ok(())
}

async fn wait_until(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test]
async fn a_dripped_request_body_is_cut_off_with_408_and_frees_the_backend() {
    bounded(async {
        let b = counting_backend().await;
        let Rig { sc, .. } = Rig::builder()
            .backend(format!("http://{}", b.addr))
            .cfg(|c| c.server("body_read_timeout", "\"1s\""))
            .start()
            .await;
        let mut s = TcpStream::connect(sc.addr).await.unwrap();
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 10\r\n\r\nx",
            valid()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        assert!(
            wait_until(Duration::from_secs(3), || b.open.load(Ordering::SeqCst) == 1).await,
            "the request reached the backend"
        );
        let started = Instant::now();
        // One more byte after 2 s (over the 1 s limit) would be too late.
        let r = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s))
            .await
            .expect("the sidecar answers a stalled body");
        r.assert_error(408, "request_timeout");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert!(
            wait_until(Duration::from_secs(3), || b.open.load(Ordering::SeqCst) == 0).await,
            "the backend connection is dropped"
        );
        // A body that keeps coming within the limit is fine.
        let mut s = TcpStream::connect(sc.addr).await.unwrap();
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 4\r\n\r\n",
            valid()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            s.write_all(b"y").await.unwrap();
        }
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 200, "{}", r.text());
    })
    .await
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_and_frees_the_backend() {
    bounded(async {
        let b = counting_backend().await;
        let Rig { sc, .. } = Rig::builder()
            .backend(format!("http://{}", b.addr))
            .cfg(|c| c.server("write_stall_timeout", "\"1s\""))
            .start()
            .await;
        let mut s = TcpStream::connect(sc.addr).await.unwrap();
        let head = format!(
            "GET /big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            valid()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        assert!(
            wait_until(Duration::from_secs(3), || b.open.load(Ordering::SeqCst)
                == 1)
            .await,
            "the request reached the backend"
        );
        // Never read: socket buffers fill, the sidecar's writes stall, then it gives up.
        assert!(
            wait_until(Duration::from_secs(8), || b.open.load(Ordering::SeqCst)
                == 0)
            .await,
            "the backend connection is dropped while the client reads nothing"
        );
        // The client's connection was closed: reading drains what was buffered, then ends.
        let mut buf = vec![0u8; 1 << 20];
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert_eq!(drained, Ok(true), "the client connection was closed");
        drop(sc);
    })
    .await
}

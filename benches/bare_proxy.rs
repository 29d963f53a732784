//! A bare hyper 1 forwarder: the floor of the stack auth-sidecar is built on, for
//! benches/run.sh (`bare` rows). No auth, no header rewriting, no timers, no metrics, no
//! logging: a hyper HTTP/1.1 server and, per client connection, one backend connection
//! opened with `hyper::client::conn::http1` (opened on the first request, reused for the
//! connection's life). Built as an example so the binary has a stable path:
//!
//!     cargo build --release --example bare_proxy
//!     target/release/examples/bare_proxy 127.0.0.1:18330 127.0.0.1:18300
//!
//! `BARE_WORKERS` (1): 1 = a current-thread runtime (as the sidecar with
//! `worker_threads = 1`), N = a multi-thread runtime with N workers. `BARE_SAME_TASK=1`
//! drives the backend connection in the client connection's task (joined futures)
//! instead of a task of its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// No boxing: the backend's body passes through as it is.
type Body = Either<Incoming, Full<Bytes>>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(backend)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_proxy LISTEN_ADDR BACKEND_ADDR");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse()?;
    let backend: SocketAddr = backend.parse()?;
    let workers: usize = std::env::var("BARE_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let same_task = std::env::var("BARE_SAME_TASK").is_ok_and(|v| v == "1");
    let rt = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    rt.block_on(serve(listen, backend, same_task))
}

async fn serve(
    listen: SocketAddr,
    backend: SocketAddr,
    same_task: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(conn(stream, backend, same_task));
    }
}

/// The backend sender, opened lazily; taken out for the duration of one exchange
/// (HTTP/1.1 requests on a client connection come one at a time).
struct Upstream {
    tx: Mutex<Option<SendRequest<Incoming>>>,
    /// With BARE_SAME_TASK: hands the backend connection to the client task to drive.
    driver: Mutex<Option<oneshot::Sender<BackendConn>>>,
    backend: SocketAddr,
}

type BackendConn = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Incoming>;

async fn conn(stream: TcpStream, backend: SocketAddr, same_task: bool) {
    let (driver_tx, driver_rx) = oneshot::channel();
    let up = Arc::new(Upstream {
        tx: Mutex::new(None),
        driver: Mutex::new(same_task.then_some(driver_tx)),
        backend,
    });
    let svc = service_fn(move |req: Request<Incoming>| {
        let up = up.clone();
        async move { Ok::<_, Infallible>(forward(&up, req).await) }
    });
    let server = hyper::server::conn::http1::Builder::new()
        .writev(false)
        .serve_connection(TokioIo::new(stream), svc);
    if !same_task {
        let _ = server.await;
        return;
    }
    // One task drives both connections: the client's, and the backend's once opened.
    tokio::pin!(server);
    let backend_conn = async {
        match driver_rx.await {
            Ok(c) => {
                let _ = c.await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(backend_conn);
    tokio::select! {
        _ = &mut server => {}
        _ = &mut backend_conn => { let _ = server.await; }
    }
}

async fn forward(up: &Upstream, req: Request<Incoming>) -> Response<Body> {
    let taken = up.tx.lock().ok().and_then(|mut t| t.take());
    let mut tx = match taken {
        Some(tx) => tx,
        None => match open(up).await {
            Some(tx) => tx,
            None => return bad_gateway(),
        },
    };
    if tx.ready().await.is_err() {
        return bad_gateway();
    }
    let resp = tx.send_request(req).await;
    if let Ok(mut t) = up.tx.lock() {
        *t = Some(tx);
    }
    match resp {
        Ok(r) => r.map(Either::Left),
        Err(_) => bad_gateway(),
    }
}

async fn open(up: &Upstream) -> Option<SendRequest<Incoming>> {
    let io = TcpStream::connect(up.backend).await.ok()?;
    let _ = io.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(io))
        .await
        .ok()?;
    let driver = up.driver.lock().ok().and_then(|mut d| d.take());
    match driver {
        Some(d) => {
            let _ = d.send(conn);
        }
        None => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    }
    Some(tx)
}

fn bad_gateway() -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from_static(b"bad gateway"))));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

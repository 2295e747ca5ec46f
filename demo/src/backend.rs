//! A WebSocket echo backend that can be told to fail: refuse handshakes with a status, delay
//! them, or reset new TCP connections. It counts the handshakes it sees, so a test can prove a
//! refused upgrade never reached it. Plain HTTP requests get `200 ok`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Healthy,
    /// Answer upgrade requests with this status instead of 101.
    FailHandshakes(u16),
    /// Wait this long before answering a handshake.
    SlowHandshakes(Duration),
    /// Reset every new TCP connection before reading it.
    ResetConnections,
}

#[derive(Debug)]
pub struct Control {
    mode: Mutex<Mode>,
    handshakes: AtomicU64,
    accepted: AtomicU64,
    plain_requests: AtomicU64,
    sessions: AtomicI64,
    /// A gauge in [0, 1] exported at /metrics for Prometheus alerts (the full-loop demo).
    backpressure_milli: AtomicU64,
}

impl Control {
    pub fn set_mode(&self, mode: Mode) {
        if let Ok(mut m) = self.mode.lock() {
            *m = mode;
        }
    }
    pub fn mode(&self) -> Mode {
        self.mode.lock().map(|m| *m).unwrap_or(Mode::Healthy)
    }
    /// Upgrade requests seen (answered or failed).
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::SeqCst)
    }
    /// Upgrades answered with 101.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
    pub fn plain_requests(&self) -> u64 {
        self.plain_requests.load(Ordering::SeqCst)
    }
    /// WebSocket sessions open now.
    pub fn sessions(&self) -> i64 {
        self.sessions.load(Ordering::SeqCst)
    }
    pub fn set_backpressure(&self, level: f64) {
        self.backpressure_milli.store((level.clamp(0.0, 1.0) * 1000.0) as u64, Ordering::SeqCst);
    }
}

pub struct Backend {
    pub addr: SocketAddr,
    pub control: Arc<Control>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Starts on `127.0.0.1:port` (0 = a free port).
    pub async fn start(port: u16) -> anyhow::Result<Backend> {
        Self::start_on("127.0.0.1", port).await
    }

    /// Starts on `host:port` (a container binds 0.0.0.0).
    pub async fn start_on(host: &str, port: u16) -> anyhow::Result<Backend> {
        let listener = TcpListener::bind((host, port)).await?;
        let addr = listener.local_addr()?;
        let control = Arc::new(Control {
            mode: Mutex::new(Mode::Healthy),
            handshakes: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            plain_requests: AtomicU64::new(0),
            sessions: AtomicI64::new(0),
            backpressure_milli: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/metrics", axum::routing::get(metrics))
            .route("/admin/backpressure", axum::routing::post(set_backpressure))
            .route("/admin/fail", axum::routing::post(set_failing))
            .fallback(handle)
            .with_state(control.clone());
        let ctl = control.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if ctl.mode() == Mode::ResetConnections {
                    // SO_LINGER 0 makes the close an RST, as a crashed backend would.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    drop(stream);
                    continue;
                }
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let _ = Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Backend { addr, control, task })
    }
}

async fn metrics(State(c): State<Arc<Control>>) -> String {
    format!(
        "# TYPE collab_backpressure_level gauge\ncollab_backpressure_level {}\n\
         # TYPE collab_websocket_sessions gauge\ncollab_websocket_sessions {}\n",
        c.backpressure_milli.load(Ordering::SeqCst) as f64 / 1000.0,
        c.sessions()
    )
}

async fn handle(State(c): State<Arc<Control>>, ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>) -> Response {
    let Ok(ws) = ws else {
        c.plain_requests.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::OK, "ok\n").into_response();
    };
    c.handshakes.fetch_add(1, Ordering::SeqCst);
    match c.mode() {
        Mode::FailHandshakes(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return (status, "backend failing\n").into_response();
        }
        Mode::SlowHandshakes(d) => tokio::time::sleep(d).await,
        Mode::Healthy | Mode::ResetConnections => {}
    }
    c.accepted.fetch_add(1, Ordering::SeqCst);
    let c2 = c.clone();
    ws.on_upgrade(move |socket| echo(socket, c2))
}

/// `POST /admin/backpressure?level=0.97`: what the backend reports to Prometheus.
async fn set_backpressure(
    State(c): State<Arc<Control>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    match q.get("level").and_then(|l| l.parse::<f64>().ok()) {
        Some(level) if (0.0..=1.0).contains(&level) => {
            c.set_backpressure(level);
            (StatusCode::OK, format!("backpressure {level}\n")).into_response()
        }
        _ => (StatusCode::BAD_REQUEST, "level: a number in [0, 1]\n").into_response(),
    }
}

/// `POST /admin/fail?status=503` fails new handshakes; `status=0` heals.
async fn set_failing(
    State(c): State<Arc<Control>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    match q.get("status").and_then(|l| l.parse::<u16>().ok()) {
        Some(0) => c.set_mode(Mode::Healthy),
        Some(status) if (400..600).contains(&status) => c.set_mode(Mode::FailHandshakes(status)),
        _ => return (StatusCode::BAD_REQUEST, "status: 0 or an HTTP error status\n").into_response(),
    }
    (StatusCode::OK, format!("{:?}\n", c.mode())).into_response()
}

async fn echo(mut socket: WebSocket, c: Arc<Control>) {
    c.sessions.fetch_add(1, Ordering::SeqCst);
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(t) => Message::Text(t),
            Message::Binary(b) => Message::Binary(b),
            Message::Close(_) => break,
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
    c.sessions.fetch_sub(1, Ordering::SeqCst);
}

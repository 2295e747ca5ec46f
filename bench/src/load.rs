//! An open-loop load generator on loopback: requests are scheduled at a fixed rate and each
//! one's latency is measured from the time it was *scheduled*, so a slow server cannot hide its
//! queueing by slowing the generator down (no coordinated omission).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 GET on keep-alive connections.
    Http,
    /// A WebSocket upgrade on a new connection each, closed once answered.
    Upgrade,
}

#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub kind: Kind,
    pub rate: u64,
    pub duration: Duration,
    /// Keep-alive connections for `Http` (each carries one request at a time).
    pub connections: usize,
}

pub struct Outcome {
    /// Microseconds from the scheduled send time to the end of the response head/body.
    pub latency: Histogram<u64>,
    pub scheduled: u64,
    /// 2xx and 101.
    pub ok: u64,
    /// 503 (refused).
    pub refused: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn p(&self, q: f64) -> u64 {
        self.latency.value_at_quantile(q)
    }
}

#[expect(clippy::expect_used, reason = "constant bounds that hdrhistogram accepts")]
pub fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// The schedule: the instants at which requests are due.
pub fn schedule(start: Instant, rate: u64, duration: Duration) -> impl Iterator<Item = Instant> {
    let n = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let interval_ns = 1_000_000_000f64 / rate.max(1) as f64;
    (0..n).map(move |i| start + Duration::from_nanos((i as f64 * interval_ns) as u64))
}

#[derive(Default)]
struct Tally {
    ok: u64,
    refused: u64,
    errors: u64,
}

pub async fn run(addr: SocketAddr, load: Load) -> Outcome {
    let hist = Arc::new(Mutex::new(histogram()));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now() + Duration::from_millis(20);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    match load.kind {
        Kind::Http => {
            for _ in 0..load.connections.max(1) {
                let (rx, hist, tally) = (rx.clone(), hist.clone(), tally.clone());
                workers.push(tokio::spawn(async move { http_worker(addr, rx, hist, tally).await }));
            }
        }
        Kind::Upgrade => {
            let (hist, tally) = (hist.clone(), tally.clone());
            workers.push(tokio::spawn(async move {
                let mut tasks = Vec::new();
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(due) = next else { break };
                    let (hist, tally) = (hist.clone(), tally.clone());
                    tasks.push(tokio::spawn(async move {
                        let r = upgrade_once(addr).await;
                        record(&hist, &tally, due, r).await;
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            }));
        }
    }
    let mut scheduled = 0;
    for due in schedule(start, load.rate, load.duration) {
        tokio::time::sleep_until(due.into()).await;
        if tx.send(due).is_err() {
            break;
        }
        scheduled += 1;
    }
    drop(tx);
    for w in workers {
        let _ = w.await;
    }
    let elapsed = start.elapsed();
    let latency = hist.lock().await.clone();
    let t = tally.lock().await;
    Outcome { latency, scheduled, ok: t.ok, refused: t.refused, errors: t.errors, elapsed }
}

async fn record(hist: &Mutex<Histogram<u64>>, tally: &Mutex<Tally>, due: Instant, status: Option<u16>) {
    let us = due.elapsed().as_micros().max(1) as u64;
    let mut t = tally.lock().await;
    match status {
        Some(200..=299 | 101) => t.ok += 1,
        Some(503) => t.refused += 1,
        _ => {
            t.errors += 1;
            return;
        }
    }
    drop(t);
    let _ = hist.lock().await.record(us);
}

async fn http_worker(
    addr: SocketAddr,
    rx: Arc<Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>>,
    hist: Arc<Mutex<Histogram<u64>>>,
    tally: Arc<Mutex<Tally>>,
) {
    let mut conn = KeepAlive::new(addr);
    loop {
        let next = rx.lock().await.recv().await;
        let Some(due) = next else { break };
        let status = conn.request().await;
        record(&hist, &tally, due, status).await;
    }
}

/// One keep-alive connection, made on first use and again after a failure.
struct KeepAlive {
    addr: SocketAddr,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl KeepAlive {
    fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive { addr, conn: None, buf: Vec::with_capacity(4096) }
    }

    /// One request; its status, or None when no connection could be made or it failed (then
    /// the next request connects again).
    async fn request(&mut self) -> Option<u16> {
        if self.conn.is_none() {
            let c = TcpStream::connect(self.addr).await.ok()?;
            let _ = c.set_nodelay(true);
            self.conn = Some(c);
        }
        let status = match self.conn.as_mut() {
            Some(c) => http_once(c, &mut self.buf).await,
            None => None,
        };
        if status.is_none() {
            self.conn = None;
        }
        status
    }

    fn drop_connection(&mut self) {
        self.conn = None;
    }
}

const HTTP_REQUEST: &[u8] = b"GET /bench HTTP/1.1\r\nhost: bench\r\n\r\n";

/// One request on a keep-alive connection; the status, or None when the connection failed.
async fn http_once(c: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    c.write_all(HTTP_REQUEST).await.ok()?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = c.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).ok()?;
            let status = head.split_whitespace().nth(1)?.parse().ok()?;
            let len = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = c.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(status);
        }
    }
}

const UPGRADE_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nhost: bench\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A new connection, an upgrade request, the answer's status; the connection is then closed.
async fn upgrade_once(addr: SocketAddr) -> Option<u16> {
    let mut c = TcpStream::connect(addr).await.ok()?;
    let _ = c.set_nodelay(true);
    c.write_all(UPGRADE_REQUEST).await.ok()?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut chunk)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if find(&buf, b"\r\n\r\n").is_some() {
            let head = std::str::from_utf8(&buf).ok()?;
            return head.split_whitespace().nth(1)?.parse().ok();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What a closed loop delivered: every connection sends its next request as soon as the last
/// answer is in, so the slowest party sets the pace.
pub struct Throughput {
    pub completed: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Throughput {
    pub fn per_s(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(0.001)
    }
}

/// HTTP/1.1 keep-alive requests on `connections` connections in a closed loop for `duration`.
pub async fn closed_loop(addr: SocketAddr, connections: usize, duration: Duration) -> Throughput {
    let start = Instant::now();
    let end = start + duration;
    let workers: Vec<_> = (0..connections.max(1))
        .map(|_| {
            tokio::spawn(async move {
                let (mut completed, mut errors) = (0u64, 0u64);
                let mut conn = KeepAlive::new(addr);
                while Instant::now() < end {
                    match conn.request().await {
                        Some(200..=299) => completed += 1,
                        // Any other answer: start again on a new connection.
                        _ => {
                            errors += 1;
                            conn.drop_connection();
                        }
                    }
                }
                (completed, errors)
            })
        })
        .collect();
    let (mut completed, mut errors) = (0, 0);
    for w in workers {
        if let Ok((c, e)) = w.await {
            completed += c;
            errors += e;
        }
    }
    Throughput { completed, errors, elapsed: start.elapsed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_open_loop_at_the_rate() {
        let start = Instant::now();
        let times: Vec<Instant> = schedule(start, 1000, Duration::from_millis(50)).collect();
        assert_eq!(times.len(), 50);
        assert_eq!(times[0], start);
        assert_eq!(times[10] - start, Duration::from_millis(10));
        assert_eq!(times[49] - start, Duration::from_millis(49));
    }

    #[tokio::test]
    async fn latency_counts_from_the_scheduled_time_not_the_send() {
        // A server that answers each request after 20 ms, one at a time: at 200 req/s on one
        // connection, requests queue, and the latency must show the queueing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            }
        });
        let load = Load { kind: Kind::Http, rate: 200, duration: Duration::from_millis(500), connections: 1 };
        let out = run(addr, load).await;
        assert_eq!(out.ok, 100);
        // Served at 50/s while scheduled at 200/s: the last waits ~1.5 s beyond its due time.
        assert!(out.p(0.99) > 1_000_000, "p99 {} µs hides the queue", out.p(0.99));
        assert!(out.p(0.0) >= 20_000);
    }

    #[tokio::test]
    async fn a_closed_loop_goes_at_the_server_s_pace_and_counts_what_fails() {
        // One connection to a server that takes 10 ms per answer: about 100 answers a second,
        // whatever the generator could send; every third answer is a 500.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut buf, mut n_req) = ([0u8; 1024], 0u32);
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        n_req += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        let status = if n_req % 3 == 0 { "500 Oops" } else { "200 OK" };
                        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
                        let _ = s.write_all(answer.as_bytes()).await;
                    }
                });
            }
        });
        let t = closed_loop(addr, 1, Duration::from_millis(600)).await;
        let answered = t.completed + t.errors;
        assert!((30..=62).contains(&answered), "{answered} answers in 600 ms at 10 ms each");
        assert!(t.errors >= answered / 3 - 1 && t.errors <= answered / 3 + 1, "{} errors of {answered}", t.errors);
        assert!(t.per_s() < 110.0, "{} req/s: faster than the server answers", t.per_s());
    }
}

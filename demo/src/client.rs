//! Client side: open WebSocket sessions through Envoy, and plain HTTP requests.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Session = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a refused (non-101) handshake got back.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Refused {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub enum Upgrade {
    Open(Box<Session>),
    Refused(Refused),
}

/// Attempts a WebSocket upgrade at `ws://addr/path`.
pub async fn upgrade(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<Upgrade> {
    let url = format!("ws://{addr}{path}");
    match tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url)).await {
        Err(_) => Err(anyhow!("upgrade timed out")),
        Ok(Ok((session, _))) => Ok(Upgrade::Open(Box::new(session))),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Ok(Upgrade::Refused(Refused { status: resp.status().as_u16(), headers, body }))
        }
        Ok(Err(e)) => Err(anyhow!("upgrade failed: {e}")),
    }
}

/// Sends `text` and waits for its echo.
pub async fn echo(session: &mut Session, text: &str) -> anyhow::Result<()> {
    session.send(Message::text(text)).await.context("send")?;
    let deadline = Duration::from_secs(5);
    loop {
        match tokio::time::timeout(deadline, session.next()).await {
            Err(_) => return Err(anyhow!("no echo within {deadline:?}")),
            Ok(None) => return Err(anyhow!("session closed")),
            Ok(Some(Err(e))) => return Err(anyhow!("session error: {e}")),
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => return Ok(()),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

pub type HttpAnswer = (u16, BTreeMap<String, String>, String);

/// A plain `GET` over HTTP/1.1: status, headers (lower-case names), body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<HttpAnswer> {
    http_request(addr, "GET", path, &[], "").await
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<HttpAnswer> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await?;
    let raw =
        tokio::time::timeout(Duration::from_secs(10), read_response(&mut stream)).await.context("read timed out")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no header end in {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<BTreeMap<_, _>>();
    let body = if headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, headers, body))
}

/// Reads one response: up to its `content-length` when it has one (some servers keep the
/// connection open whatever the request asked), else to the end of the stream.
async fn read_response(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == "content-length")
            .and_then(|(_, v)| v.trim().parse::<usize>().ok());
        let status_without_body = head.split_whitespace().nth(1).is_some_and(|s| s == "304" || s == "204");
        match length {
            Some(len) if raw.len() >= end + 4 + len => return Ok(raw),
            None if status_without_body => return Ok(raw),
            _ => {}
        }
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

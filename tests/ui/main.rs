//! floodgate-control's status page in a real headless Chromium, driven over the DevTools
//! protocol: the page shows an activation made through the API, and a mouse click on its
//! Deactivate button deactivates it.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

use std::net::SocketAddr;
use std::time::Duration;

use floodgate_tests::client::http_request;
use floodgate_tests::envoy::{free_port, scratch_dir};
use floodgate_tests::eventually;
use floodgate_tests::procs::ControlPlane;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const TOKEN: &str = "ui-test-token";

mod websocket;

struct Chromium {
    child: tokio::process::Child,
    port: u16,
}

impl Chromium {
    async fn start() -> Chromium {
        let port = free_port().unwrap();
        let dir = scratch_dir().unwrap();
        let bin = std::env::var("FLOODGATE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let child = tokio::process::Command::new(&bin)
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"])
            .arg(format!("--remote-debugging-port={port}"))
            .arg(format!("--user-data-dir={}", dir.display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e} (install it with scripts/deps.sh chromium)"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        eventually(Duration::from_secs(30), "chromium's DevTools endpoint", || async {
            matches!(http_request(addr, "GET", "/json/version", &[], "").await, Ok((200, _, _))).then_some(())
        })
        .await;
        Chromium { child, port }
    }

    /// Opens `url` in a new tab and connects to it.
    async fn open(&self, url: &str) -> Page {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let (status, _, body) = http_request(addr, "PUT", &format!("/json/new?{url}"), &[], "").await.unwrap();
        assert_eq!(status, 200, "{body}");
        let target: Value = serde_json::from_str(&body).unwrap();
        let ws = target["webSocketDebuggerUrl"].as_str().unwrap();
        let (socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
        Page { socket, next_id: 1 }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

struct Page {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::text(msg)).await.unwrap();
        loop {
            let frame =
                tokio::time::timeout(Duration::from_secs(10), self.socket.next()).await.unwrap().unwrap().unwrap();
            let Message::Text(t) = frame else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page; its value (JSON-able).
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true})).await;
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` every 100 ms until it is neither null nor false (at most 15 s).
    async fn wait_for(&mut self, expr: &str, what: &str) -> Value {
        let start = std::time::Instant::now();
        loop {
            let v = self.eval(expr).await;
            if !v.is_null() && v != Value::Bool(false) {
                return v;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "timed out waiting for {what} ({expr})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&mut self, selector: &str) {
        let rect = self
            .eval(&format!(
                "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        let (x, y) = (rect[0].as_f64().unwrap(), rect[1].as_f64().unwrap());
        for kind in ["mousePressed", "mouseReleased"] {
            let p = json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1});
            self.call("Input.dispatchMouseEvent", p).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_an_activation_and_a_click_deactivates_it() {
    let control = ControlPlane::start(0, TOKEN, &[]).await.unwrap();
    control.json("POST", "/api/v1/breakers/collab_ws/activate", r#"{"reason":"ui_test","ttl_s":600}"#).await.unwrap();
    let chromium = Chromium::start().await;
    let mut page = chromium.open(&format!("http://{}/ui#token={TOKEN}", control.addr)).await;

    let row = r#"#activations tr[data-key="collab_ws"]"#;
    let shown = page.wait_for(&format!("document.querySelector({row:?})?.innerText ?? null"), "the activation").await;
    let shown = shown.as_str().unwrap().to_string();
    assert!(shown.contains("forced_open") && shown.contains("ui_test"), "row: {shown}");

    page.click(r#"button.deactivate[data-key="collab_ws"]"#).await;
    eventually(Duration::from_secs(10), "the deactivation in the API", || async {
        let b = control.json("GET", "/api/v1/breakers", "").await.ok()?;
        b["activations"].as_array()?.is_empty().then_some(())
    })
    .await;
    let events = control.json("GET", "/api/v1/breakers", "").await.unwrap();
    assert_eq!(events["events"][0]["type"], "deactivated", "{events}");
    page.wait_for(&format!("document.querySelector({row:?}) === null || null"), "the row to go").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_drain_in_progress_with_its_pace_and_end() {
    let control = ControlPlane::start(0, TOKEN, &[]).await.unwrap();
    let answer = control
        .json("POST", "/api/v1/breakers/collab_ws/drain", r#"{"per_second":20,"duration_s":600,"reason":"deploy"}"#)
        .await
        .unwrap();
    let until = answer["outcome"]["until"].as_str().unwrap().to_string();
    let chromium = Chromium::start().await;
    let mut page = chromium.open(&format!("http://{}/ui#token={TOKEN}", control.addr)).await;
    let row = r#"#drains tr[data-key="collab_ws"]"#;
    let shown = page.wait_for(&format!("document.querySelector({row:?})?.innerText ?? null"), "the drain").await;
    let shown = shown.as_str().unwrap().to_string();
    assert!(shown.contains("20") && shown.contains("deploy") && shown.contains(&until), "row: {shown} (until {until})");
}

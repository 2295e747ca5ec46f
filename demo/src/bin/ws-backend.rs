//! The demo's WebSocket echo backend as a standalone server (docker-compose uses it).
//! `POST /admin/backpressure?level=0.97` and `POST /admin/fail?status=503` drive a scenario.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8081);
    let host = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1".into());
    let backend = floodgate_demo::backend::Backend::start_on(&host, port).await?;
    println!("ws-backend listening on {}", backend.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}

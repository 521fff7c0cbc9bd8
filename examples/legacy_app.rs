//! Runs the demo's legacy app alone: `cargo run --example legacy_app -- 127.0.0.1:9001`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("legacy app on http://{address}");
    strangler::demo::serve(listener, strangler::demo::App::Legacy).await;
    Ok(())
}

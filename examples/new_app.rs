//! Runs the demo's new orders service alone: `cargo run --example new_app -- 127.0.0.1:9002`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".into());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("orders-v2 app on http://{address}");
    strangler::demo::serve(listener, strangler::demo::App::OrdersV2).await;
    Ok(())
}

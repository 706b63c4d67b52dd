#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: cascade_auction::Settings = cascade_server::settings::from_command_line(
        "auction",
        "auction: ranks every impression's candidates",
    )?;
    cascade_server::telemetry::init();
    let listener = cascade_server::grpc::bind("auction", &settings.grpc).await?;
    cascade_auction::serve(settings, listener, cascade_server::shutdown::signal()).await?;
    Ok(())
}

/// mimalloc: a decision allocates and frees many small objects (a decoded bid request is
/// hundreds of strings, vectors and maps); glibc's malloc spent a third of bid-intake's
/// CPU on them (BENCHMARKS.md, issue 18).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: cascade_network_caller::Settings = cascade_server::settings::from_command_line(
        "network-caller",
        "network-caller: calls mediated networks, live bids and waterfalls",
    )?;
    let _telemetry = cascade_server::telemetry::init("network-caller")?;
    let store = settings.state.open()?;
    let listener = cascade_server::grpc::bind("network-caller", &settings.grpc).await?;
    cascade_network_caller::serve(
        settings,
        store,
        listener,
        cascade_server::shutdown::signal(),
    )
    .await?;
    Ok(())
}

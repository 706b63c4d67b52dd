/// mimalloc: a decision allocates and frees many small objects (a decoded bid request is
/// hundreds of strings, vectors and maps); glibc's malloc spent a third of bid-intake's
/// CPU on them (BENCHMARKS.md, issue 18).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: cascade_bid_intake::Settings = cascade_server::settings::from_command_line(
        "bid-intake",
        "bid-intake: the decision API's front door",
    )?;
    let _telemetry = cascade_server::telemetry::init("bid-intake")?;
    let store = settings.state.open()?;
    let listener = cascade_server::grpc::bind("bid-intake", &settings.grpc).await?;
    cascade_bid_intake::serve(
        settings,
        store,
        listener,
        cascade_server::shutdown::signal(),
    )
    .await?;
    Ok(())
}

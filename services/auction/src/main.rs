/// mimalloc: a decision allocates and frees many small objects (a decoded bid request is
/// hundreds of strings, vectors and maps); glibc's malloc spent a third of bid-intake's
/// CPU on them (BENCHMARKS.md, issue 18).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: cascade_auction::Settings = cascade_server::settings::from_command_line(
        "auction",
        "auction: ranks every impression's candidates",
    )?;
    let _telemetry = cascade_server::telemetry::init("auction")?;
    let listener = cascade_server::grpc::bind("auction", &settings.grpc).await?;
    cascade_auction::serve(settings, listener, cascade_server::shutdown::signal()).await?;
    Ok(())
}

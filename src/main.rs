//! The `causeway` binary: CLI → validated arguments → run. Nothing else.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use tokio_util::sync::CancellationToken;

use causeway::cli::{Cli, Command, LabCommand, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Certs(c) => print(Ok(format!("{}\n", c.run()?))),
        c @ (Command::Status(_) | Command::Explain(_) | Command::Diagnose(_)) => {
            causeway::inspect::run(c)
        }
        Command::Broker(args) => {
            daemon(
                |shutdown| async move { causeway::broker::run(args.into_config(), shutdown).await },
            )
        }
        Command::Gateway(args) => daemon(|shutdown| causeway::app::run_gateway(*args, shutdown)),
        Command::Dns(args) => daemon(|shutdown| causeway::replica::run((&args).into(), shutdown)),
        Command::Lab(LabCommand::Demo(run)) if run.kube => {
            causeway_netlab::demo::demo_kube(&current_exe()?)
        }
        Command::Lab(LabCommand::Demo(run)) => {
            causeway_netlab::demo::demo(&current_exe()?, run.shape.addressing())
        }
        Command::Lab(LabCommand::Up(run)) if run.kube => {
            causeway_netlab::demo::up_kube(&current_exe()?)
        }
        Command::Lab(LabCommand::Up(run)) => {
            causeway_netlab::demo::up(&current_exe()?, run.shape.addressing())
        }
        Command::Lab(LabCommand::Down) => {
            causeway_netlab::demo::down(causeway_netlab::DEFAULT_PREFIX)
        }
        Command::Lab(LabCommand::Failover { rounds, svg, shape }) => {
            let addressing = shape.addressing();
            causeway_netlab::failover::failover(&current_exe()?, rounds.into(), &svg, addressing)
        }
        Command::Lab(LabCommand::FailoverClient(a)) => {
            causeway_netlab::failover::client::run(&a.name, a.port, a.interval_ms, a.timeout_ms)
        }
        Command::Lab(LabCommand::HttpServe { listen, body }) => {
            causeway_netlab::http_serve(listen, body)
        }
        Command::Crds => print(causeway::source::k8s::crd::crds_yaml().map_err(Into::into)),
        Command::Install(args) => print(args.to_install().and_then(|install| {
            let objects = causeway::source::k8s::manifests::install(&install)?;
            Ok(causeway::source::k8s::manifests::to_yaml(&objects))
        })),
    }
}

fn print(text: anyhow::Result<String>) -> anyhow::Result<()> {
    print!("{}", text?);
    Ok(())
}

fn current_exe() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("finding the causeway binary")
}

/// Runs a daemon on a multi-threaded runtime until SIGINT or SIGTERM.
fn daemon<F, Fut>(f: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot watch SIGTERM");
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("Shutting down");
            on_signal.cancel();
        });
        f(shutdown).await
    })
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("warning: bad --log filter {filter:?} ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

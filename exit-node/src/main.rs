//! `exit-node`: the Half-Tunnel exit service.

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::Read as _;
use std::path::Path;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use exit_node::config::{Config, SAMPLE};
use exit_node::keys::{decode_key, encode_key};
use tokio::signal::unix::{SignalKind, signal};

/// The Half-Tunnel exit node: terminates the two legs of client sessions, dials
/// destinations under a default-deny egress policy, and resolves DNS.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Configuration files.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Run the node in the foreground until SIGTERM or Ctrl-C; SIGHUP reloads clients and
    /// egress policy.
    Run {
        /// The configuration file.
        #[arg(long, default_value = "/etc/half-tunnel/exit-node.toml")]
        config: PathBuf,
    },
    /// Print a new private key (base64).
    Genkey,
    /// Read a private key (base64) on standard input and print its public key.
    Pubkey,
    /// Parse and validate a configuration (and the key files it names) without starting.
    CheckConfig {
        /// The configuration file.
        #[arg(long, default_value = "/etc/half-tunnel/exit-node.toml")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print a commented sample configuration with every key and its default.
    Generate,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Config {
            action: ConfigAction::Generate,
        } => {
            print!("{SAMPLE}");
            ExitCode::SUCCESS
        }
        Command::Run { config } => report(run(&config)),
        Command::Genkey => {
            println!("{}", encode_key(&proto::generate_keypair().0));
            ExitCode::SUCCESS
        }
        Command::Pubkey => report(pubkey()),
        Command::CheckConfig { config } => match check_config(&config) {
            Ok((clients, warnings)) => {
                for warning in warnings {
                    eprintln!("exit-node: warning: {warning}");
                }
                println!("{}: ok ({clients} clients)", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("exit-node: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("exit-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn pubkey() -> anyhow::Result<()> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    let private = decode_key(&text).context("standard input")?;
    println!("{}", encode_key(&proto::public_key(&private)));
    Ok(())
}

fn run(path: &Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::load(path)?;
    for warning in config.warnings(path) {
        tracing::warn!("{warning}");
    }
    let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.file.runtime.worker_threads {
        runtime.worker_threads(threads.get());
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async move {
        let mut node = exit_node::node::start(&config, &dir).await?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            tokio::select! {
                _ = hup.recv() => match reload(&node, path) {
                    Ok(ended) => tracing::info!(sessions_ended = ended, "configuration reloaded"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "reload failed; keeping the running configuration"),
                },
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!("draining sessions");
        node.shutdown(std::time::Duration::from_secs(5)).await;
        Ok(())
    })
}

/// SIGHUP: load the config again (logging its warnings) and apply its clients and policy.
fn reload(node: &exit_node::node::Node, path: &Path) -> anyhow::Result<usize> {
    let config = Config::load(path)?;
    for warning in config.warnings(path) {
        tracing::warn!("{warning}");
    }
    Ok(node.reload(&config)?)
}

/// Everything `run` would load before binding: the config, its key files and TLS files.
/// The number of clients and the config's warnings.
fn check_config(path: &Path) -> anyhow::Result<(usize, Vec<String>)> {
    let config = Config::load(path)?;
    exit_node::node::proto_settings(&config)?;
    let base = path.parent().unwrap_or(Path::new("."));
    for leg in [&config.file.listen.up, &config.file.listen.down] {
        if let Some(tls) = &leg.tls {
            exit_node::listener::tls::acceptor(&base.join(&tls.cert), &base.join(&tls.key))?;
        }
    }
    Ok((config.clients.len(), config.warnings(path)))
}

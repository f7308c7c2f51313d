//! `exit-node`: the Half-Tunnel exit service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use exit_node::config::{Config, SAMPLE};

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
        Command::CheckConfig { config } => match check_config(&config) {
            Ok(clients) => {
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

/// Everything `run` would load before binding: the config, its key files and TLS files.
fn check_config(path: &std::path::Path) -> anyhow::Result<usize> {
    let config = Config::load(path)?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    for leg in [&config.file.listen.up, &config.file.listen.down] {
        if let Some(tls) = &leg.tls {
            exit_node::listener::tls::acceptor(&base.join(&tls.cert), &base.join(&tls.key))?;
        }
    }
    Ok(config.clients.len())
}

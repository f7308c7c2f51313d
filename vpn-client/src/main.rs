//! `vpn-client`: the Half-Tunnel client.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vpn_client::config::{Config, SAMPLE};

/// The Half-Tunnel client: routes the whole machine through a split-path tunnel.
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
    /// Parse and validate a configuration without changing anything.
    CheckConfig {
        /// The configuration file.
        #[arg(long, default_value = "/etc/half-tunnel/client.toml")]
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
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vpn-client: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

//! `vpn-client`: the Half-Tunnel client.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vpn_client::config::{Config, SAMPLE};
use vpn_client::keys::{decode_key, encode_key};
use vpn_client::session::status;

const DEFAULT_CONFIG: &str = "/etc/half-tunnel/client.toml";

/// The Half-Tunnel client: routes the whole machine through a split-path tunnel.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bring the tunnel up in the foreground (root); Ctrl-C or SIGTERM tears it down.
    Up {
        /// The configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Undo what a crashed or killed instance left behind (routes, rules, firewall, DNS).
    Down {
        /// The configuration file (for the journal directory).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the running instance's session, legs, flows and DNS counters.
    Status {
        /// The configuration file (for the control socket path).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// Print a new private key (base64).
    Genkey,
    /// Read a private key on stdin, print its public key (base64).
    Pubkey,
    /// Configuration files.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Parse and validate a configuration without changing anything.
    CheckConfig {
        /// The configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print a commented sample configuration with every key and its default.
    Generate,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vpn-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()?)
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up { config } => {
            let threads = Config::load(&config)?.runtime.worker_threads.get();
            runtime(threads)?.block_on(vpn_client::up::up(&config))
        }
        Command::Down { config } => down(&config),
        Command::Status { config, json } => {
            let cfg = Config::load(&config)?;
            let st = runtime(1)?.block_on(status::query(&cfg.runtime.control_socket))?;
            if json {
                println!("{}", serde_json::to_string(&st)?);
            } else {
                print!("{}", st.render());
            }
            Ok(())
        }
        Command::Genkey => {
            let (private, _) = proto::generate_keypair();
            println!("{}", encode_key(&private));
            Ok(())
        }
        Command::Pubkey => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            let private = decode_key("stdin", &text)?;
            println!("{}", encode_key(&proto::public_key(&private)));
            Ok(())
        }
        Command::Config {
            action: ConfigAction::Generate,
        } => {
            print!("{SAMPLE}");
            Ok(())
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(&config)?;
            vpn_client::up::driver_config(&cfg, None)?;
            println!("{}: ok", config.display());
            Ok(())
        }
    }
}

fn down(config: &Path) -> anyhow::Result<()> {
    let dir = match Config::load(config) {
        Ok(cfg) => cfg.runtime.journal_dir,
        Err(e) => {
            let dir = PathBuf::from(platform::DEFAULT_JOURNAL_DIR);
            tracing::warn!("{e}; using the default journal directory {}", dir.display());
            dir
        }
    };
    match vpn_client::up::down(&dir)? {
        platform::Recovery::Clean => {
            println!("nothing to restore ({} has no journal)", dir.display())
        }
        platform::Recovery::Restored(n) => println!("restored: undid {n} changes"),
    }
    Ok(())
}

//! Assembling a running node from a validated config: the exit's own addresses (listed and
//! followed), resolver, dialer, session store, listeners, admin endpoint and the periodic
//! stats line. `main` adds signals; tests start a node in-process on loopback with port 0.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::admin::{Admin, Metrics};
use crate::config::Config;
use crate::descriptors::{self, Budget, Descriptors};
use crate::dial::Dialer;
use crate::dns::{Dns, DnsError};
use crate::own::{self, OwnAddresses, OwnError};
use crate::server::{self, Listening, StartError};
use crate::session::{self, Hub, SessionLimits};

/// Why the node could not start (beyond config errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Listeners or TLS.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The resolver.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// The exit's own addresses could not be listed (the node would not know what to
    /// refuse).
    #[error(transparent)]
    OwnAddresses(#[from] OwnError),
    /// The session threads could not be started.
    #[error("starting the session threads: {0}")]
    Threads(#[source] std::io::Error),
    /// The state directory.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A limit is outside what the protocol allows.
    #[error("limits.{key}: {message}")]
    Limit {
        /// The config key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    /// Where it listens.
    pub listening: Listening,
    /// The session store.
    pub hub: Arc<Hub>,
    /// The exit's own addresses, kept current by `_watcher`.
    own: OwnAddresses,
    _watcher: own::Watcher,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn dialer(config: &Config, own: &OwnAddresses) -> Result<Dialer, NodeError> {
    Ok(Dialer {
        policy: Arc::new(config.policy.clone().with_own_set(own.clone())),
        dns: Dns::new(&config.file.dns)?,
        connect_timeout: config.file.egress.connect_timeout,
    })
}

/// Protocol settings from `[session]` and `[limits]`.
pub fn proto_settings(config: &Config) -> Result<proto::Settings, NodeError> {
    let limits = &config.file.limits;
    if limits.bandwidth_per_client != 0 {
        return Err(NodeError::Limit {
            key: "bandwidth_per_client",
            message: "per-client bandwidth limits are not implemented in this version; set 0"
                .into(),
        });
    }
    let defaults = proto::Settings::default();
    let max_record = (limits
        .max_message_size
        .saturating_sub(proto::message::RECORD_OVERHEAD))
    .min(defaults.max_record as usize) as u32;
    if max_record < proto::MIN_MAX_RECORD {
        return Err(NodeError::Limit {
            key: "max_message_size",
            message: format!(
                "must be at least {} bytes (one protocol record)",
                proto::MIN_MAX_RECORD as usize + proto::message::RECORD_OVERHEAD
            ),
        });
    }
    // Half the per-session buffer budget for what the client sends us; the rest bounds
    // what we hold for the client (the client's window, announced in its handshake).
    let session_window = (limits.max_buffered_bytes_per_session / 2).min(u32::MAX as usize) as u32;
    if session_window < defaults.stream_window.min(1 << 20) {
        return Err(NodeError::Limit {
            key: "max_buffered_bytes_per_session",
            message: "must be at least 2 MiB".into(),
        });
    }
    Ok(proto::Settings {
        max_streams: limits.max_streams_per_session.min(u32::MAX as usize) as u32,
        session_window,
        stream_window: defaults.stream_window.min(session_window),
        // An eighth of the session window (the pool of stream credit above the initial
        // windows, PROTOCOL §6.2) at most: eight fast uploads share it before any of them
        // is held to its initial window.
        max_stream_window: defaults
            .max_stream_window
            .min(session_window / 8)
            .max(defaults.stream_window.min(session_window)),
        max_record,
        fallback: config.file.session.fallback_to_up_leg,
        idle_ttl: config.file.session.idle_ttl,
        ..defaults
    })
}

/// Start everything `config` describes; `config_dir` anchors relative file names.
pub async fn start(config: &Config, config_dir: &Path) -> Result<Node, NodeError> {
    let metrics = Metrics::default();
    // Without a readable limit, assume the usual default soft limit.
    let soft_limit = descriptors::raise_nofile_limit().unwrap_or(1024);
    let own = OwnAddresses::default();
    let watcher = own::Watcher::start(own.clone()).await?;
    let limits = SessionLimits {
        proto: proto_settings(config)?,
        max_sessions: config.file.limits.max_sessions,
        max_sessions_per_client: config.file.limits.max_sessions_per_client.get(),
        max_dns_queries: crate::dns::max_queries_per_node(Budget::reserve(soft_limit)),
        handshake_timeout: config.file.limits.handshake_timeout,
        max_message_size: config.file.limits.max_message_size,
        handshakes_per_second: config.file.limits.handshakes_per_second_per_source,
        udp_idle_timeout: config.file.egress.udp_idle_timeout,
    };
    if let Some(warning) = leg_descriptors_warning(config.file.limits.max_sessions, soft_limit) {
        tracing::warn!(
            max_sessions = config.file.limits.max_sessions,
            soft_limit,
            "{warning}"
        );
    }
    let budget = Budget::new(soft_limit, config.file.limits.max_dest_sockets_per_session);
    let threads = Arc::new(session_threads(config)?);
    let (replay, marks) =
        crate::state::ReplayStore::open(&config_dir.join(&config.file.runtime.state_dir))?;
    let hub = Hub::new(
        config.private_key,
        &config.clients,
        dialer(config, &own)?,
        limits,
        Descriptors::new(budget),
        metrics.clone(),
        Some(threads.clone()),
    );
    hub.persist_replay_marks(Arc::new(replay), &marks);
    let (legs_tx, legs_rx) = mpsc::channel(256);
    let mut tasks = vec![tokio::spawn(session::serve(hub.clone(), legs_rx))];
    let admin = Admin {
        metrics,
        ready: Arc::new(AtomicBool::new(false)),
        sessions: hub.clone(),
        token: config.admin_token.clone(),
    };
    let listening = server::listen(
        &config.file,
        config_dir,
        Some(admin),
        legs_tx,
        Some(threads),
    )
    .await?;
    tasks.push(tokio::spawn(stats_lines(
        hub.clone(),
        config.file.log.stats_interval,
    )));
    tracing::info!(
        up = %listening.up,
        down = %listening.down,
        clients = config.clients.len(),
        public_key = %proto::fingerprint(&proto::public_key(&config.private_key)),
        "exit node running"
    );
    Ok(Node {
        listening,
        hub,
        own,
        _watcher: watcher,
        tasks,
    })
}

impl Node {
    /// Apply a reloaded config's clients and egress policy; sessions of removed client
    /// keys end. Listener and limit changes need a restart.
    pub fn reload(&self, config: &Config) -> Result<usize, NodeError> {
        Ok(self.hub.reload(&config.clients, dialer(config, &self.own)?))
    }

    /// Stop accepting, end every session, and wait up to `deadline` for them to go.
    pub async fn shutdown(&mut self, deadline: Duration) {
        self.listening.stop_accepting();
        self.hub
            .close_all(proto::CloseCode::Shutdown, "exit node shutting down");
        let until = tokio::time::Instant::now() + deadline;
        while self.hub.session_count() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.hub.session_count();
        tracing::info!(sessions_left = left, "shut down");
    }
}

/// `[runtime] session_threads`, or one per CPU.
fn session_threads(config: &Config) -> Result<session::SessionThreads, NodeError> {
    let n = config
        .file
        .runtime
        .session_threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, |n| n.get());
    session::SessionThreads::start(n).map_err(NodeError::Threads)
}

async fn stats_lines(hub: Arc<Hub>, every: Duration) {
    if every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut last = (0u64, 0u64);
    loop {
        tick.tick().await;
        let (streams, up, down) = hub.totals();
        let secs = every.as_secs_f64();
        tracing::info!(
            sessions = hub.session_count(),
            streams,
            dest_sockets = hub.dest_sockets(),
            up_bytes_per_sec = (up.saturating_sub(last.0) as f64 / secs) as u64,
            down_bytes_per_sec = (down.saturating_sub(last.1) as f64 / secs) as u64,
            "stats"
        );
        hub.metrics.streams.set(streams as i64);
        last = (up, down);
    }
}

/// Every session holds two leg sockets outside the destination budget: if
/// `limits.max_sessions` sessions' legs alone would not fit in the descriptor limit (with
/// room for the listeners), a full house starves everything; say so at start.
fn leg_descriptors_warning(max_sessions: usize, soft_limit: u64) -> Option<String> {
    let legs = 2 * max_sessions as u64;
    (legs + 64 > soft_limit).then(|| {
        format!(
            "limits.max_sessions = {max_sessions} needs about {legs} descriptors for legs \
             alone, but the limit is {soft_limit}: raise it (LimitNOFILE=) or lower \
             limits.max_sessions"
        )
    })
}

#[cfg(test)]
mod leg_descriptor_tests {
    use super::leg_descriptors_warning;

    #[test]
    fn too_many_sessions_for_the_descriptor_limit_are_warned_about() {
        let w = leg_descriptors_warning(1024, 1024).expect("1024 sessions need 2048 fds");
        assert!(
            w.contains("limits.max_sessions = 1024") && w.contains("2048"),
            "{w}"
        );
        assert!(leg_descriptors_warning(1024, 65536).is_none());
        assert!(leg_descriptors_warning(400, 1024).is_none());
    }
}

//! `ht-relay`: a TLS-terminating WebSocket relay standing in for a CDN in front of one leg,
//! with fault hooks (TESTPLAN §4–6, §12, §20). It forwards every WebSocket message between
//! the client and the upstream (the exit node), keeping the request path and Host header.
//!
//! ```text
//! ht-relay --listen 0.0.0.0:443 [--cert C --key K] --upstream 10.0.0.2:8080 --control 127.0.0.1:9000
//! ```
//!
//! The control port takes one command per line and answers `ok` (or the stats):
//! `kill` (drop every connection, no close frame), `close` (clean WebSocket close),
//! `stall on|off` (hold messages), `refuse on|off` (reset new connections),
//! `flip|dup|drop c2s|s2c N` (bit-flip, duplicate or drop the next N binary messages that
//! way; c2s is client to exit),
//! `replay` (open a new upstream connection and send it the first message of the most
//! recent connection: a replayed handshake or attach), `stats`.
//!
//! Hostile-relay hooks (issue 20 §3, TESTPLAN §29), each for the next N connections:
//! `answer4404 N` (answer the client's first message — its attach or handshake — with a
//! WebSocket close 4404 "unknown session" as an exit that lost the session would, never
//! contacting the exit), `withhold N` (hold the client's first message back; nothing else is
//! held) and `release` (forward every held first message now, late, on its own connection).
//! `stats` adds `answered_4404=` and `withheld=` (messages held back so far).
// tungstenite's handshake callback returns its (large) ErrorResponse by value.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

#[derive(Debug, Parser)]
struct Args {
    /// Address to accept clients on.
    #[arg(long)]
    listen: SocketAddr,
    /// TLS certificate chain (PEM); with --key, the relay terminates TLS.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// The exit node's plain WebSocket listener.
    #[arg(long)]
    upstream: SocketAddr,
    /// Control port.
    #[arg(long)]
    control: SocketAddr,
}

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    C2s,
    S2c,
}

#[derive(Debug, Default)]
struct Faults {
    flip: [u32; 2],
    dup: [u32; 2],
    drop: [u32; 2],
}

impl Faults {
    fn take(counter: &mut [u32; 2], dir: Dir) -> bool {
        let n = &mut counter[dir as usize];
        let hit = *n > 0;
        *n = n.saturating_sub(1);
        hit
    }
}

#[derive(Debug, Default)]
struct Relay {
    faults: Mutex<Faults>,
    stalled: watch::Sender<bool>,
    refuse: AtomicBool,
    /// Bumped by `kill`/`close`; connections watch it.
    generation: watch::Sender<(u64, bool)>,
    last_first: Mutex<Option<(String, String, Vec<u8>)>>,
    connections: AtomicU64,
    /// Connections still to answer with close 4404 (`answer4404 N`).
    answer_4404: AtomicU64,
    /// Connections answered with close 4404.
    answered_4404: AtomicU64,
    /// Connections whose first client message is still to be withheld (`withhold N`).
    withhold: AtomicU64,
    /// First messages withheld so far.
    withheld: AtomicU64,
    /// Bumped by `release`: connections forward the message they hold.
    release: watch::Sender<u64>,
    messages: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    upstream: Mutex<Option<SocketAddr>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(acceptor(cert, key)?),
        _ => None,
    };
    let relay = Arc::new(Relay::default());
    *relay.upstream.lock().expect("lock") = Some(args.upstream);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    let control = TcpListener::bind(args.control)
        .await
        .with_context(|| format!("bind {}", args.control))?;
    // Tests bind port 0 and read the real addresses from this line.
    println!(
        "listening {} control {}",
        listener.local_addr()?,
        control.local_addr()?
    );
    tokio::spawn(control_loop(control, relay.clone()));
    loop {
        let (tcp, _) = listener.accept().await?;
        if relay.refuse.load(Ordering::Relaxed) {
            drop(tcp);
            continue;
        }
        let (relay, tls) = (relay.clone(), tls.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let result = match tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => serve(stream, relay, args.upstream).await,
                    Err(e) => Err(e.into()),
                },
                None => serve(tcp, relay, args.upstream).await,
            };
            if let Err(e) = result {
                eprintln!("ht-relay: connection ended: {e:#}");
            }
        });
    }
}

fn acceptor(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let chain =
        rustls_pki_types::CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve<S>(io: S, relay: Arc<Relay>, upstream: SocketAddr) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut target = (String::new(), String::new());
    let capture = |req: &Request, resp: Response| {
        let host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("relay");
        target = (host.to_owned(), req.uri().path().to_owned());
        Ok(resp)
    };
    let mut client = tokio_tungstenite::accept_hdr_async(io, capture).await?;
    let (host, path) = target;
    if take_one(&relay.answer_4404) {
        return answer_unknown_session(client, &relay).await;
    }
    let withhold = take_one(&relay.withhold);
    // Subscribing marks the current value seen: only a later `release` wakes it.
    let mut release = relay.release.subscribe();
    let mut held: Option<Message> = None;
    let tcp = TcpStream::connect(upstream).await?;
    let _ = tcp.set_nodelay(true);
    let (mut server, _) =
        tokio_tungstenite::client_async(format!("ws://{host}{path}"), tcp).await?;
    relay.connections.fetch_add(1, Ordering::Relaxed);
    let mut generation = relay.generation.subscribe();
    let start = generation.borrow_and_update().0;
    let mut first = true;
    loop {
        tokio::select! {
            msg = client.next() => {
                let Some(Ok(msg)) = msg else { break };
                if first && msg.is_binary() {
                    *relay.last_first.lock().expect("lock") = Some((host.clone(), path.clone(), msg.clone().into_data().to_vec()));
                    first = false;
                    if withhold {
                        relay.withheld.fetch_add(1, Ordering::Relaxed);
                        held = Some(msg);
                        continue;
                    }
                }
                forward(&relay, Dir::C2s, msg, &mut server).await?;
            }
            _ = release.changed(), if held.is_some() => {
                if let Some(msg) = held.take() {
                    forward(&relay, Dir::C2s, msg, &mut server).await?;
                }
            }
            msg = server.next() => {
                let Some(Ok(msg)) = msg else { break };
                forward(&relay, Dir::S2c, msg, &mut client).await?;
            }
            _ = generation.changed() => {
                let (now, clean) = *generation.borrow();
                if now != start {
                    if clean {
                        let _ = client.close(None).await;
                        let _ = server.close(None).await;
                    }
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Take one from a `… N` hook's counter; whether there was one.
fn take_one(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// Play an exit that does not know the session: wait for the client's first message,
/// answer it with close 4404 and finish the close handshake. The exit never hears of it.
async fn answer_unknown_session<S>(
    mut client: tokio_tungstenite::WebSocketStream<S>,
    relay: &Relay,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match client.next().await {
            Some(Ok(msg)) if msg.is_binary() => break,
            Some(Ok(_)) => {}
            _ => return Ok(()),
        }
    }
    let close = CloseFrame {
        code: 4404u16.into(),
        reason: "unknown session".into(),
    };
    client.close(Some(close)).await?;
    relay.answered_4404.fetch_add(1, Ordering::Relaxed);
    // Read the client's echo of the close (bounded: a client that never answers is dropped).
    let drain = async { while let Some(Ok(_)) = client.next().await {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
    Ok(())
}

async fn forward<S>(relay: &Relay, dir: Dir, msg: Message, to: &mut S) -> anyhow::Result<()>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let mut stalled = relay.stalled.subscribe();
    while *stalled.borrow_and_update() {
        let _ = stalled.changed().await;
    }
    if !msg.is_binary() {
        return Ok(to.send(msg).await?);
    }
    let (flip, dup, drop) = {
        let mut f = relay.faults.lock().expect("lock");
        (
            Faults::take(&mut f.flip, dir),
            Faults::take(&mut f.dup, dir),
            Faults::take(&mut f.drop, dir),
        )
    };
    if drop {
        return Ok(());
    }
    let mut data = msg.into_data().to_vec();
    if flip && !data.is_empty() {
        let at = data.len() / 2;
        data[at] ^= 0x01;
    }
    relay.messages[dir as usize].fetch_add(1, Ordering::Relaxed);
    relay.bytes[dir as usize].fetch_add(data.len() as u64, Ordering::Relaxed);
    if dup {
        to.send(Message::binary(data.clone())).await?;
    }
    Ok(to.send(Message::binary(data)).await?)
}

async fn control_loop(listener: TcpListener, relay: Arc<Relay>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let relay = relay.clone();
        tokio::spawn(async move {
            let (read, mut write) = tcp.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = command(&relay, line.trim()).await;
                if write
                    .write_all(format!("{reply}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

async fn command(relay: &Relay, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let dir = |w: &str| match w {
        "c2s" => Some(Dir::C2s),
        "s2c" => Some(Dir::S2c),
        _ => None,
    };
    match words[..] {
        ["kill"] => relay
            .generation
            .send_modify(|(n, clean)| (*n, *clean) = (*n + 1, false)),
        ["close"] => relay
            .generation
            .send_modify(|(n, clean)| (*n, *clean) = (*n + 1, true)),
        ["stall", on] => {
            relay.stalled.send_replace(on == "on");
        }
        ["refuse", on] => relay.refuse.store(on == "on", Ordering::Relaxed),
        [kind @ ("flip" | "dup" | "drop"), d, n] => {
            let (Some(d), Ok(n)) = (dir(d), n.parse::<u32>()) else {
                return "error: usage".into();
            };
            let mut f = relay.faults.lock().expect("lock");
            let counter = match kind {
                "flip" => &mut f.flip,
                "dup" => &mut f.dup,
                _ => &mut f.drop,
            };
            counter[d as usize] = n;
        }
        ["replay"] => return replay(relay).await,
        [hook @ ("answer4404" | "withhold"), n] => {
            let Ok(n) = n.parse::<u64>() else {
                return "error: usage".into();
            };
            match hook {
                "answer4404" => relay.answer_4404.store(n, Ordering::Relaxed),
                _ => relay.withhold.store(n, Ordering::Relaxed),
            }
        }
        ["release"] => {
            relay.release.send_modify(|n| *n += 1);
        }
        ["stats"] => {
            let m = |i: usize| relay.messages[i].load(Ordering::Relaxed);
            let b = |i: usize| relay.bytes[i].load(Ordering::Relaxed);
            return format!(
                "connections={} c2s_messages={} c2s_bytes={} s2c_messages={} s2c_bytes={} \
                 answered_4404={} withheld={}",
                relay.connections.load(Ordering::Relaxed),
                m(0),
                b(0),
                m(1),
                b(1),
                relay.answered_4404.load(Ordering::Relaxed),
                relay.withheld.load(Ordering::Relaxed),
            );
        }
        _ => return format!("error: unknown command {line:?}"),
    }
    "ok".into()
}

/// Replay the first message of the most recent connection on a fresh upstream connection;
/// reports how many messages the upstream answered within a second.
async fn replay(relay: &Relay) -> String {
    let Some((host, path, first)) = relay.last_first.lock().expect("lock").clone() else {
        return "error: nothing to replay".into();
    };
    let Some(upstream) = *relay.upstream.lock().expect("lock") else {
        return "error: no upstream".into();
    };
    let attempt = async {
        let tcp = TcpStream::connect(upstream).await?;
        let (mut ws, _) =
            tokio_tungstenite::client_async(format!("ws://{host}{path}"), tcp).await?;
        ws.send(Message::binary(first)).await?;
        let mut answers = 0;
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(1));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(m)) if m.is_binary() => answers += 1,
                    Some(Ok(_)) => {}
                    _ => break,
                },
                _ = &mut deadline => break,
            }
        }
        anyhow::Ok(answers)
    };
    match attempt.await {
        Ok(n) => format!("replayed answers={n}"),
        Err(e) => format!("replayed error={e}"),
    }
}

//! `ht-abuse`: the misbehaving peers of TESTPLAN §23, for namespace tests. Every command
//! talks only to the address it is given (a relay or the exit inside the test's
//! namespaces).
//!
//! * `ht-abuse conns ADDR MODE COUNT SECS [--tls SNI CA] [--path P]` — open COUNT
//!   connections at once to a leg listener (plain, or TLS to a relay) and misbehave in
//!   MODE; wait up to SECS for the server to close each one and print
//!   `mode=M count=N closed=C open=O refused=R not_upgraded=U min_ms=A max_ms=B`
//!   (A/B: the first/last close, counted from each connection's start). MODE is one of
//!   - `idle`: connect, never send a byte;
//!   - `slowloris`: an upgrade request one header byte every 200 ms, never finished;
//!   - `bighead`: an upgrade request with 1 MiB of header lines (an oversized handshake);
//!   - `silent`: a valid WebSocket upgrade, then no message;
//!   - `oversized`: upgrade, then one 1 MiB binary message;
//!   - `junk`: upgrade, then a 100-byte binary message that is neither handshake nor attach;
//!   - `text`: upgrade, then a text message;
//!   - `garbage`: upgrade, then bytes that are not WebSocket framing.
//! * `ht-abuse hold-tcp ADDR COUNT SECS` — open COUNT TCP connections to an echo service at
//!   once, check each echoes a line (5 s), keep the good ones open until SECS have passed
//!   and print `ok=N failed=M`.
//! * `ht-abuse stall-get ADDR PATH COUNT SECS` — COUNT HTTP GETs of PATH at once, each
//!   reading 64 KiB of the response and then nothing for SECS (an app that stops reading);
//!   print `stalled=N` (the ones that got their 64 KiB).
//! * `ht-abuse pause-get ADDR PATH COUNT READ_BYTES SECS` — COUNT HTTP GETs of PATH at
//!   once (a body longer than READ_BYTES), each read as fast as it can; once every one has
//!   read at least READ_BYTES (those ahead keep reading until then, so that all stop at
//!   the same moment) they all stop reading without closing, and
//!   `paused=N failed=F secs=T min_mib=A max_mib=B` is printed (flushed at once; A/B: the
//!   least and most any connection had read); then the sockets are held unread for SECS.
//!   A connection that has not read its share within 60 s counts as failed.
//! * `ht-abuse pause-put ADDR COUNT BYTES SECS` — COUNT TCP connections at once, each
//!   writing up to BYTES as fast as it can; once every connection's writes have been
//!   blocked for a second (or it wrote everything), `paused=N failed=F writing=0 secs=T
//!   min_mib=A max_mib=B` is printed (flushed at once; A/B: the least and most any
//!   connection got written), and the connections are held open, writes still pending, for
//!   SECS. If they are not all blocked within 60 s the line is printed anyway, `writing=W`
//!   counting those still moving.

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words[..] {
        ["conns", addr, mode, count, secs, ref rest @ ..] => {
            conns(addr, mode, count, secs, rest).await
        }
        ["hold-tcp", addr, count, secs] => hold_tcp(addr, count, secs).await,
        ["stall-get", addr, path, count, secs] => stall_get(addr, path, count, secs).await,
        ["pause-get", addr, path, count, share, secs] => {
            pause_get(addr, path, count, share, secs).await
        }
        ["pause-put", addr, count, bytes, secs] => pause_put(addr, count, bytes, secs).await,
        _ => Err(
            "usage: ht-abuse conns ADDR MODE COUNT SECS [--tls SNI CA] [--path P] | \
                  hold-tcp ADDR COUNT SECS | stall-get ADDR PATH COUNT SECS | \
                  pause-get ADDR PATH COUNT READ_BYTES SECS | pause-put ADDR COUNT BYTES SECS"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ht-abuse: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How one abusive connection ended.
#[derive(Debug)]
enum Outcome {
    /// The server closed it after this long.
    Closed(Duration),
    /// Still open when the wait ended.
    Open,
    /// The connect failed.
    Refused,
    /// The server answered the upgrade with something other than 101 (then closed).
    NotUpgraded(Duration),
}

struct Target {
    addr: SocketAddr,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    host: String,
    path: String,
}

async fn conns(
    addr: &str,
    mode: &str,
    count: &str,
    secs: &str,
    rest: &[&str],
) -> Result<(), Error> {
    let count: usize = count.parse()?;
    let wait = Duration::from_secs_f64(secs.parse()?);
    let mut target = Target {
        addr: addr.parse()?,
        tls: None,
        host: "exit".into(),
        path: "/u".into(),
    };
    let mut rest = rest.iter();
    while let Some(flag) = rest.next() {
        match *flag {
            "--tls" => {
                let (Some(sni), Some(ca)) = (rest.next(), rest.next()) else {
                    return Err("--tls needs SNI and CA".into());
                };
                target.tls = Some((connector(ca)?, sni.to_string().try_into()?));
                target.host = sni.to_string();
            }
            "--path" => target.path = rest.next().ok_or("--path needs a value")?.to_string(),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if !matches!(
        mode,
        "idle" | "slowloris" | "bighead" | "silent" | "oversized" | "junk" | "text" | "garbage"
    ) {
        return Err(format!("unknown mode {mode}").into());
    }
    let target = Arc::new(target);
    let mut tasks = Vec::new();
    for _ in 0..count {
        let (target, mode) = (target.clone(), mode.to_owned());
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            match tokio::time::timeout(wait, abuse(&target, &mode, start)).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::Open,
            }
        }));
    }
    let (mut closed, mut open, mut refused, mut not_upgraded) = (Vec::new(), 0, 0, 0);
    for task in tasks {
        match task.await? {
            Outcome::Closed(d) => closed.push(d),
            Outcome::Open => open += 1,
            Outcome::Refused => refused += 1,
            Outcome::NotUpgraded(d) => {
                not_upgraded += 1;
                closed.push(d);
            }
        }
    }
    let ms = |d: Option<&Duration>| d.map_or(0, Duration::as_millis);
    println!(
        "mode={mode} count={count} closed={} open={open} refused={refused} \
         not_upgraded={not_upgraded} min_ms={} max_ms={}",
        closed.len(),
        ms(closed.iter().min()),
        ms(closed.iter().max()),
    );
    Ok(())
}

fn connector(ca: &str) -> Result<tokio_rustls::TlsConnector, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn connect(target: &Target) -> Result<Pin<Box<dyn Io>>, Error> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    Ok(match &target.tls {
        Some((connector, name)) => Box::pin(connector.connect(name.clone(), tcp).await?),
        None => Box::pin(tcp),
    })
}

fn upgrade_request(target: &Target) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.path, target.host
    )
}

/// A masked client frame (FIN set) with `opcode` and `payload`.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Read until the server closes (EOF or error); how long after `start`.
async fn until_closed(io: &mut (impl AsyncRead + Unpin + ?Sized), start: Instant) -> Duration {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
    }
}

/// Read the HTTP response head; whether it is `101 Switching Protocols`.
async fn read_upgrade(io: &mut (impl AsyncRead + Unpin + ?Sized)) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match io.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
        if head.len() > 64 * 1024 {
            return false;
        }
    }
    head.starts_with(b"HTTP/1.1 101")
}

async fn abuse(target: &Target, mode: &str, start: Instant) -> Outcome {
    let Ok(mut io) = connect(target).await else {
        return Outcome::Refused;
    };
    match mode {
        "idle" => return Outcome::Closed(until_closed(&mut io, start).await),
        "slowloris" => {
            let request = upgrade_request(target);
            // Everything but the final blank line, then an endless header value.
            let head = &request.as_bytes()[..request.len() - 2];
            let endless = head.iter().copied().chain(b"X-Slow: ".iter().copied());
            let endless = endless.chain(std::iter::repeat(b'a'));
            let (mut reader, mut writer) = tokio::io::split(io);
            let trickle = async {
                for byte in endless {
                    if writer.write_all(&[byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            tokio::select! {
                closed = until_closed(&mut reader, start) => return Outcome::Closed(closed),
                () = trickle => return Outcome::Closed(start.elapsed()),
            }
        }
        "bighead" => {
            let request = upgrade_request(target);
            let mut big = request[..request.len() - 2].to_owned();
            let line = format!("X-Big: {}\r\n", "b".repeat(1000));
            while big.len() < 1 << 20 {
                big += &line;
            }
            big += "\r\n";
            let (mut reader, mut writer) = tokio::io::split(io);
            let send = async {
                let _ = writer.write_all(big.as_bytes()).await;
                std::future::pending::<()>().await
            };
            let mut head = Vec::new();
            let read = async {
                let mut buf = vec![0u8; 4096];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => return start.elapsed(),
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            };
            let closed = tokio::select! {
                closed = read => closed,
                () = send => unreachable!("pending"),
            };
            return if head.starts_with(b"HTTP/1.1 101") {
                Outcome::Closed(closed)
            } else {
                Outcome::NotUpgraded(closed)
            };
        }
        _ => {}
    }
    if io
        .write_all(upgrade_request(target).as_bytes())
        .await
        .is_err()
    {
        return Outcome::NotUpgraded(start.elapsed());
    }
    if !read_upgrade(&mut io).await {
        return Outcome::NotUpgraded(start.elapsed());
    }
    let payload = match mode {
        "silent" => Vec::new(),
        "oversized" => frame(0x2, &vec![0x5a; 1 << 20]),
        "junk" => frame(0x2, &[0xab; 100]),
        "text" => frame(0x1, b"hello, exit"),
        "garbage" => b"\x00\x00this is not websocket framing\r\n".repeat(64),
        other => unreachable!("mode {other} checked above"),
    };
    let (mut reader, mut writer) = tokio::io::split(io);
    let send = async {
        let _ = writer.write_all(&payload).await;
        let _ = writer.flush().await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        closed = until_closed(&mut reader, start) => Outcome::Closed(closed),
        () = send => unreachable!("pending"),
    }
}

async fn hold_tcp(addr: &str, count: &str, secs: &str) -> Result<(), Error> {
    let addr: SocketAddr = addr.parse()?;
    let count: usize = count.parse()?;
    let until = Instant::now() + Duration::from_secs_f64(secs.parse()?);
    let mut tasks = Vec::new();
    for i in 0..count {
        tasks.push(tokio::spawn(async move {
            let echo = async {
                let mut conn = TcpStream::connect(addr).await.ok()?;
                let line = format!("hold {i}\n");
                conn.write_all(line.as_bytes()).await.ok()?;
                let mut got = vec![0u8; line.len()];
                conn.read_exact(&mut got).await.ok()?;
                (got == line.as_bytes()).then_some(conn)
            };
            let conn = tokio::time::timeout(Duration::from_secs(5), echo)
                .await
                .ok()
                .flatten();
            let ok = conn.is_some();
            tokio::time::sleep_until(until.into()).await;
            drop(conn);
            ok
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await?);
    }
    println!("ok={ok} failed={}", count - ok);
    Ok(())
}

async fn stall_get(addr: &str, path: &str, count: &str, secs: &str) -> Result<(), Error> {
    let addr: SocketAddr = addr.parse()?;
    let count: usize = count.parse()?;
    let hold = Duration::from_secs_f64(secs.parse()?);
    let mut tasks = Vec::new();
    for _ in 0..count {
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            let start = async {
                let mut conn = TcpStream::connect(addr).await.ok()?;
                let req =
                    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                conn.write_all(req.as_bytes()).await.ok()?;
                let mut got = vec![0u8; 64 * 1024];
                conn.read_exact(&mut got).await.ok()?;
                Some(conn)
            };
            let conn = tokio::time::timeout(Duration::from_secs(10), start)
                .await
                .ok()
                .flatten();
            let ok = conn.is_some();
            // The app stops reading: the connection stays open, nothing is read.
            tokio::time::sleep(hold).await;
            drop(conn);
            ok
        }));
    }
    let mut stalled = 0;
    for task in tasks {
        stalled += usize::from(task.await?);
    }
    println!("stalled={stalled}");
    Ok(())
}

/// How long `pause-get` waits for a connection to read its share, and `pause-put` for every
/// connection to be blocked.
const PAUSE_DEADLINE: Duration = Duration::from_secs(60);

/// Print one line and flush it at once (the test waits for it while this process runs on).
fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 20) as f64)
}

async fn pause_get(
    addr: &str,
    path: &str,
    count: &str,
    share: &str,
    secs: &str,
) -> Result<(), Error> {
    let addr: SocketAddr = addr.parse()?;
    let count: usize = count.parse()?;
    let share: u64 = share.parse()?;
    let hold = Duration::from_secs_f64(secs.parse()?);
    let started = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Each connection reports once whether it read its share, then how much it read when
    // it stopped reading.
    let (reached_tx, mut reached_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let (read_tx, mut read_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    for _ in 0..count {
        let (path, mut stop) = (path.to_owned(), stop_rx.clone());
        let (reached, read) = (reached_tx.clone(), read_tx.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let fast = async {
                let mut conn = TcpStream::connect(addr).await.ok()?;
                let req =
                    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                conn.write_all(req.as_bytes()).await.ok()?;
                let mut got = 0u64;
                while got < share {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => got += n as u64,
                    }
                }
                Some((conn, got))
            };
            let first = tokio::time::timeout(PAUSE_DEADLINE, fast)
                .await
                .ok()
                .flatten();
            let _ = reached.send(first.is_some());
            let Some((mut conn, mut got)) = first else {
                return;
            };
            // Ahead of the others: keep reading until every connection has had its share.
            loop {
                tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => break,
                    r = conn.read(&mut buf) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n as u64,
                    },
                }
            }
            let _ = read.send(got);
            // The app stops reading: the connection stays open, nothing is read.
            tokio::time::sleep(hold).await;
            drop(conn);
        });
    }
    drop((reached_tx, read_tx));
    let mut paused = 0;
    for _ in 0..count {
        paused += usize::from(reached_rx.recv().await.unwrap_or(false));
    }
    let _ = stop_tx.send(true);
    let secs = started.elapsed().as_secs_f64();
    let mut read = Vec::new();
    while read.len() < paused {
        match tokio::time::timeout(Duration::from_secs(5), read_rx.recv()).await {
            Ok(Some(got)) => read.push(got),
            _ => break,
        }
    }
    say(&format!(
        "paused={paused} failed={} secs={secs:.3} min_mib={} max_mib={}",
        count - paused,
        mib(read.iter().copied().min().unwrap_or(0)),
        mib(read.iter().copied().max().unwrap_or(0)),
    ));
    tokio::time::sleep(hold).await;
    Ok(())
}

/// A `pause-put` connection's state: connecting, writing (last progress), done or failed.
const CONNECTING: u64 = 0;
const DONE: u64 = u64::MAX - 1;
const FAILED: u64 = u64::MAX;

async fn pause_put(addr: &str, count: &str, bytes: &str, secs: &str) -> Result<(), Error> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    /// A connection whose writes have not moved for this long is blocked.
    const QUIET: Duration = Duration::from_secs(1);
    let addr: SocketAddr = addr.parse()?;
    let count: usize = count.parse()?;
    let total: u64 = bytes.parse()?;
    let hold = Duration::from_secs_f64(secs.parse()?);
    let started = Instant::now();
    // Per connection: its state (milliseconds since `started` of its last progress, + 1)
    // and how much it wrote.
    let state: Arc<Vec<(AtomicU64, AtomicU64)>> = Arc::new(
        (0..count)
            .map(|_| (AtomicU64::new(CONNECTING), AtomicU64::new(0)))
            .collect(),
    );
    let now_ms = move || started.elapsed().as_millis() as u64 + 1;
    for i in 0..count {
        let state = state.clone();
        tokio::spawn(async move {
            let (progress, sent) = &state[i];
            let connect = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr));
            let Ok(Ok(mut conn)) = connect.await else {
                progress.store(FAILED, Relaxed);
                return;
            };
            progress.store(now_ms(), Relaxed);
            let chunk: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 + 1) as u8).collect();
            let mut written = 0u64;
            while written < total {
                let n = chunk.len().min((total - written) as usize);
                match conn.write(&chunk[..n]).await {
                    Ok(0) | Err(_) => {
                        progress.store(FAILED, Relaxed);
                        return;
                    }
                    Ok(n) => written += n as u64,
                }
                sent.store(written, Relaxed);
                progress.store(now_ms(), Relaxed);
            }
            progress.store(DONE, Relaxed);
            // Everything written: hold the connection open, as a blocked writer would.
            std::future::pending::<()>().await;
        });
    }
    let quiet_ms = QUIET.as_millis() as u64;
    let (paused, failed, writing) = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = now_ms();
        let (mut paused, mut failed, mut writing) = (0, 0, 0);
        for (progress, _) in state.iter() {
            match progress.load(Relaxed) {
                FAILED => failed += 1,
                DONE => paused += 1,
                CONNECTING => writing += 1,
                last if now.saturating_sub(last) >= quiet_ms => paused += 1,
                _ => writing += 1,
            }
        }
        if writing == 0 || started.elapsed() >= PAUSE_DEADLINE {
            break (paused, failed, writing);
        }
    };
    let sent: Vec<u64> = state.iter().map(|(_, sent)| sent.load(Relaxed)).collect();
    say(&format!(
        "paused={paused} failed={failed} writing={writing} secs={:.3} min_mib={} max_mib={}",
        started.elapsed().as_secs_f64(),
        mib(sent.iter().copied().min().unwrap_or(0)),
        mib(sent.iter().copied().max().unwrap_or(0)),
    ));
    // Hold every connection, blocked writes still pending, for SECS.
    tokio::time::sleep(hold).await;
    Ok(())
}

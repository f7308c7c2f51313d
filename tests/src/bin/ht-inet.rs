//! `ht-inet`: the "internet" of the end-to-end topology, one process serving
//!
//! * HTTP/1.1 (`Connection: close`): `GET /` a short page, `GET /bytes/N` the N-byte
//!   deterministic payload of [`e2e::payload`] (`?rate=B` paces it to B bytes/s, so a
//!   transfer lasts long enough for faults to land in it), `POST /upload` answers `<len> <sha256>`
//!   of the body;
//! * DNS over UDP and TCP for the zone `inet.test` (names given with `--name`);
//! * UDP and TCP echo.
//!
//! ```text
//! ht-inet --http 0.0.0.0:80 --dns 0.0.0.0:53 --echo 10.40.0.2:7 --name www=10.40.0.2
//! ```
//!
//! It prints `ready` once every listener is bound. It is only ever started inside a test's
//! own network namespace.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use e2e::payload::{Payload, SEED, Sha256};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The zone every name lives in.
const ZONE: &str = "inet.test.";

#[derive(Debug, Parser)]
struct Args {
    /// HTTP listener.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// DNS listener (UDP and TCP).
    #[arg(long)]
    dns: Option<SocketAddr>,
    /// UDP and TCP echo listener (repeatable). Give each address on its own: a UDP socket
    /// bound to 0.0.0.0 would answer from the primary address, not the one asked.
    #[arg(long)]
    echo: Vec<SocketAddr>,
    /// `LABEL=IP`: `LABEL.inet.test` has that A or AAAA record (repeatable).
    #[arg(long = "name", value_parser = parse_name)]
    names: Vec<(String, IpAddr)>,
}

fn parse_name(s: &str) -> Result<(String, IpAddr), String> {
    let (label, ip) = s.split_once('=').ok_or("expected LABEL=IP")?;
    let ip = ip.parse().map_err(|e| format!("{ip}: {e}"))?;
    Ok((format!("{}.{ZONE}", label.to_ascii_lowercase()), ip))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let names = Arc::new(args.names);
    let mut threads = Vec::new();
    if let Some(addr) = args.http {
        let listener = TcpListener::bind(addr).with_context(|| format!("bind http {addr}"))?;
        threads.push(std::thread::spawn(move || accept(listener, serve_http)));
    }
    if let Some(addr) = args.dns {
        let udp = UdpSocket::bind(addr).with_context(|| format!("bind dns/udp {addr}"))?;
        let tcp = TcpListener::bind(addr).with_context(|| format!("bind dns/tcp {addr}"))?;
        let n = names.clone();
        threads.push(std::thread::spawn(move || dns_udp(udp, &n)));
        let n = names.clone();
        threads.push(std::thread::spawn(move || {
            accept(tcp, move |c| dns_tcp(c, &n))
        }));
    }
    for addr in args.echo {
        let udp = UdpSocket::bind(addr).with_context(|| format!("bind echo/udp {addr}"))?;
        let tcp = TcpListener::bind(addr).with_context(|| format!("bind echo/tcp {addr}"))?;
        threads.push(std::thread::spawn(move || udp_echo(udp)));
        threads.push(std::thread::spawn(move || accept(tcp, tcp_echo)));
    }
    println!("ready");
    std::io::stdout().flush()?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Serve each connection on its own thread; per-connection errors are logged only.
fn accept<F>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> std::io::Result<()> + Send + Sync + Clone + 'static,
{
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let serve = serve.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(conn) {
                eprintln!("ht-inet: connection: {e}");
            }
        });
    }
}

fn serve_http(conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut length = 0u64;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, conn);
    match (method, path.strip_prefix("/bytes/")) {
        ("GET", Some(spec)) => match parse_bytes(spec) {
            Some((n, rate)) => {
                head(&mut out, "200 OK", n)?;
                paced_copy(Payload::new(SEED, n), &mut out, rate)?;
            }
            None => respond(&mut out, "400 Bad Request", b"bad length or rate\n")?,
        },
        ("GET", None) if path == "/" => respond(&mut out, "200 OK", b"hello from inet\n")?,
        ("POST", None) if path == "/upload" => {
            let mut hasher = Sha256::new();
            let mut body = reader.take(length);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = body.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            let reply = format!("{} {}\n", hasher.len(), hasher.finish());
            respond(&mut out, "200 OK", reply.as_bytes())?;
        }
        _ => respond(&mut out, "404 Not Found", b"not found\n")?,
    }
    out.flush()
}

/// `N` or `N?rate=B`.
fn parse_bytes(spec: &str) -> Option<(u64, Option<u64>)> {
    let (n, query) = spec.split_once('?').unwrap_or((spec, ""));
    let rate = match query.strip_prefix("rate=") {
        Some(r) => Some(r.parse().ok().filter(|&r| r > 0)?),
        None if query.is_empty() => None,
        None => return None,
    };
    Some((n.parse().ok()?, rate))
}

/// Copy `from` to `to`, at most `rate` bytes per second if given.
fn paced_copy(mut from: impl Read, to: &mut impl Write, rate: Option<u64>) -> std::io::Result<()> {
    let start = std::time::Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
        sent += n as u64;
        if let Some(rate) = rate {
            let due = std::time::Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                to.flush()?;
                std::thread::sleep(wait);
            }
        }
    }
}

fn head(out: &mut impl Write, status: &str, len: u64) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    )
}

fn respond(out: &mut impl Write, status: &str, body: &[u8]) -> std::io::Result<()> {
    head(out, status, body.len() as u64)?;
    out.write_all(body)
}

fn dns_udp(sock: UdpSocket, names: &[(String, IpAddr)]) {
    let mut buf = vec![0u8; 4096];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        if let Some(reply) = dns_answer(&buf[..n], names) {
            let _ = sock.send_to(&reply, from);
        }
    }
}

fn dns_tcp(mut conn: TcpStream, names: &[(String, IpAddr)]) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).is_err() {
            return Ok(());
        }
        let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
        conn.read_exact(&mut query)?;
        let Some(reply) = dns_answer(&query, names) else {
            return Ok(());
        };
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        conn.write_all(&framed)?;
    }
}

/// The authoritative answer for `inet.test`; other names are REFUSED.
fn dns_answer(query: &[u8], names: &[(String, IpAddr)]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let q = query.queries().first()?.clone();
    let mut resp = Message::new();
    resp.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .add_query(q.clone());
    let name = q.name().to_lowercase().to_ascii();
    let ours = Name::from_ascii(ZONE)
        .ok()?
        .zone_of(&q.name().to_lowercase());
    let matching: Vec<RData> = names
        .iter()
        .filter(|(n, _)| *n == name)
        .filter_map(|(_, ip)| match (ip, q.query_type()) {
            (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
            (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .collect();
    let known = names.iter().any(|(n, _)| *n == name) || name == format!("txt.{ZONE}");
    if name == format!("txt.{ZONE}") && q.query_type() == RecordType::TXT {
        let txt = RData::TXT(TXT::new(vec!["half-tunnel e2e".into()]));
        resp.add_answer(Record::from_rdata(q.name().clone(), 60, txt));
    }
    match (ours, known) {
        (false, _) => resp.set_response_code(ResponseCode::Refused),
        (true, false) => resp.set_response_code(ResponseCode::NXDomain),
        (true, true) => &mut resp,
    };
    resp.add_answers(
        matching
            .into_iter()
            .map(|rdata| Record::from_rdata(q.name().clone(), 60, rdata)),
    );
    resp.to_vec().ok()
}

fn udp_echo(sock: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        let _ = sock.send_to(&buf[..n], from);
    }
}

fn tcp_echo(mut conn: TcpStream) -> std::io::Result<()> {
    let mut reader = conn.try_clone()?;
    std::io::copy(&mut reader, &mut conn)?;
    conn.shutdown(std::net::Shutdown::Write)
}

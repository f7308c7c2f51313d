//! A tiny network probe for namespace tests (no external tools needed):
//!
//! * `ht-probe udp-echo ADDR` — echo every datagram back (runs until killed);
//! * `ht-probe tcp-echo ADDR` — echo every connection's bytes back (runs until killed);
//! * `ht-probe udp ADDR TEXT` — send TEXT, print the reply; exit 1 without one in 2 s
//!   (IPv4 sockets have SO_BROADCAST set, so broadcast addresses can be tried too);
//! * `ht-probe tcp HOST:PORT TEXT` — connect (names via the system resolver), send TEXT, half-close, print the reply;
//! * `ht-probe get HOST:PORT PATH` — HTTP GET (the host is resolved by the system
//!   resolver), stream the body into SHA-256 and print
//!   `status=S bytes=N sha256=H secs=T max_gap_ms=G` (G: the longest wait for body bytes);
//! * `ht-probe body HOST:PORT PATH [TOKEN]` — HTTP GET (with `Authorization: Bearer TOKEN`
//!   if given), print the body (exit 1 unless 200);
//! * `ht-probe put HOST:PORT LEN [RATE]` — POST LEN payload bytes to `/upload` (at most
//!   RATE bytes/s if given), print
//!   `status=S sent=N sha256=H secs=T reply=<the server's reply>`;
//! * `ht-probe dns SERVER NAME [udp|tcp [A|AAAA]]` — ask SERVER for NAME's A (or AAAA)
//!   records, print `rcode=R` and one address per line;
//! * `ht-probe sink-pause ADDR READ_BYTES [GROUP]` — accept TCP connections and read
//!   each one until it delivered READ_BYTES and GROUP connections (default 1) have done
//!   so; then stop reading it and keep it open (a destination that stops reading; runs
//!   until killed, one line on stderr per connection that reaches its share and per
//!   connection it stops reading);
//! * `ht-probe wait ADDR SECS` — retry a TCP connect until it succeeds (exit 1 after SECS);
//! * `ht-probe ping IP TEXT` — one ICMP/ICMPv6 echo with payload TEXT through a ping
//!   socket (the namespace's `net.ipv4.ping_group_range` must allow it), print
//!   `reply=TEXT`; exit 1 without a reply in 3 s.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use e2e::payload::{Payload, SEED, Sha256};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["udp-echo", addr] => udp_echo(addr),
        ["tcp-echo", addr] => tcp_echo(addr),
        ["udp", addr, text] => udp_once(addr, text),
        ["tcp", addr, text] => tcp_once(addr, text),
        ["get", addr, path] => http_get(addr, path),
        ["body", addr, path] => http_body(addr, path, None),
        ["body", addr, path, token] => http_body(addr, path, Some(token)),
        ["put", addr, len] => http_put(addr, len, None),
        ["put", addr, len, rate] => http_put(addr, len, Some(rate)),
        ["dns", server, name] => dns(server, name, "udp"),
        ["dns", server, name, transport] => dns(server, name, transport),
        ["dns", server, name, transport, "A"] => dns(server, name, transport),
        ["dns", server, name, transport, "AAAA"] => dns_typed(server, name, transport, true),
        ["sink-pause", addr, share] => sink_pause(addr, share, "1"),
        ["sink-pause", addr, share, group] => sink_pause(addr, share, group),
        ["wait", addr, secs] => wait(addr, secs),
        ["ping", ip, text] => ping(ip, text),
        _ => Err(
            "usage: ht-probe (udp-echo|tcp-echo) ADDR | (udp|tcp) ADDR TEXT | \
                  get HOST:PORT PATH | body HOST:PORT PATH [TOKEN] | put HOST:PORT LEN [RATE] | dns SERVER NAME [udp|tcp [A|AAAA]] | \
                  sink-pause ADDR READ_BYTES [GROUP] | wait ADDR SECS | ping IP TEXT"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ht-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn udp_echo(addr: &str) -> Result {
    let sock = UdpSocket::bind(addr)?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        sock.send_to(&buf[..n], from)?;
    }
}

fn tcp_echo(addr: &str) -> Result {
    let listener = TcpListener::bind(addr)?;
    for conn in listener.incoming() {
        let mut conn = conn?;
        std::thread::spawn(move || {
            let mut reader = conn.try_clone()?;
            std::io::copy(&mut reader, &mut conn)?;
            conn.shutdown(Shutdown::Write)
        });
    }
    Ok(())
}

fn udp_once(addr: &str, text: &str) -> Result {
    let bind = if addr.starts_with('[') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    // So that 255.255.255.255 (and other broadcast targets) can be tried like any address.
    if !addr.starts_with('[') {
        sock.set_broadcast(true)?;
    }
    sock.connect(addr)?;
    sock.send(text.as_bytes())?;
    let mut buf = vec![0u8; 65536];
    let n = sock.recv(&mut buf)?;
    println!("{}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}

fn tcp_once(addr: &str, text: &str) -> Result {
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(text.as_bytes())?;
    conn.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    println!("{reply}");
    Ok(())
}

fn connect(addr: &str) -> std::result::Result<TcpStream, Box<dyn std::error::Error>> {
    let target = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let conn = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(conn)
}

/// Read the status line and headers; the status code.
fn read_head(reader: &mut impl BufRead) -> std::result::Result<u16, Box<dyn std::error::Error>> {
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status:?}"))?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(code);
        }
    }
}

fn http_get(addr: &str, path: &str) -> Result {
    let start = Instant::now();
    let mut conn = connect(addr)?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reader = BufReader::with_capacity(256 * 1024, conn);
    let status = read_head(&mut reader)?;
    let mut hasher = Sha256::new();
    let mut max_gap = Duration::ZERO;
    let mut last = Instant::now();
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        max_gap = max_gap.max(last.elapsed());
        last = Instant::now();
        hasher.update(buf);
        let n = buf.len();
        reader.consume(n);
    }
    let bytes = hasher.len();
    println!(
        "status={status} bytes={bytes} sha256={} secs={:.3} max_gap_ms={}",
        hasher.finish(),
        start.elapsed().as_secs_f64(),
        max_gap.as_millis()
    );
    Ok(())
}

fn http_body(addr: &str, path: &str, token: Option<&str>) -> Result {
    let mut conn = connect(addr)?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut reader = BufReader::new(conn);
    let status = read_head(&mut reader)?;
    let mut body = String::new();
    reader.read_to_string(&mut body)?;
    print!("{body}");
    if status != 200 {
        return Err(format!("status {status}").into());
    }
    Ok(())
}

fn http_put(addr: &str, len: &str, rate: Option<&str>) -> Result {
    let len: u64 = len.parse()?;
    let rate: Option<f64> = rate.map(str::parse).transpose()?;
    let start = Instant::now();
    let mut conn = connect(addr)?;
    write!(
        conn,
        "POST /upload HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    let mut payload = Payload::new(SEED, len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = payload.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        conn.write_all(&buf[..n])?;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(hasher.len() as f64 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let mut reader = BufReader::new(conn);
    let status = read_head(&mut reader)?;
    let mut reply = String::new();
    reader.read_to_string(&mut reply)?;
    println!(
        "status={status} sent={} sha256={} secs={:.3} reply={}",
        hasher.len(),
        hasher.finish(),
        start.elapsed().as_secs_f64(),
        reply.trim()
    );
    Ok(())
}

fn dns(server: &str, name: &str, transport: &str) -> Result {
    dns_typed(server, name, transport, false)
}

fn dns_typed(server: &str, name: &str, transport: &str, aaaa: bool) -> Result {
    let server: SocketAddr = server.parse()?;
    let mut msg = Message::new();
    msg.set_id(0x4854).set_recursion_desired(true);
    let qtype = if aaaa {
        RecordType::AAAA
    } else {
        RecordType::A
    };
    msg.add_query(Query::query(Name::from_ascii(name)?, qtype));
    let query = msg.to_vec()?;
    let reply = match transport {
        "udp" => {
            let sock = UdpSocket::bind(if server.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })?;
            sock.set_read_timeout(Some(Duration::from_secs(3)))?;
            sock.send_to(&query, server)?;
            let mut buf = vec![0u8; 4096];
            let n = sock.recv(&mut buf)?;
            buf.truncate(n);
            buf
        }
        "tcp" => {
            let mut conn = TcpStream::connect_timeout(&server, Duration::from_secs(3))?;
            conn.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut framed = (query.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&query);
            conn.write_all(&framed)?;
            let mut len = [0u8; 2];
            conn.read_exact(&mut len)?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            conn.read_exact(&mut buf)?;
            buf
        }
        other => return Err(format!("unknown transport {other}").into()),
    };
    let reply = Message::from_vec(&reply)?;
    if reply.id() != 0x4854 {
        return Err(format!("reply id {} does not match", reply.id()).into());
    }
    println!("rcode={}", reply.response_code());
    for answer in reply.answers() {
        match answer.data() {
            RData::A(a) => println!("{}", a.0),
            RData::AAAA(a) => println!("{}", a.0),
            _ => {}
        }
    }
    Ok(())
}

fn sink_pause(addr: &str, share: &str, group: &str) -> Result {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let share: u64 = share.parse()?;
    let group: usize = group.parse()?;
    let listener = TcpListener::bind(addr)?;
    // Connections that delivered their share so far.
    let reached = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut conn = conn?;
        let reached = reached.clone();
        std::thread::spawn(move || {
            let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            let mut counted = false;
            while !(counted && reached.load(Ordering::SeqCst) >= group) {
                match conn.read(&mut buf) {
                    // Closed (e.g. a `wait` probe) or reset: nothing to hold.
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n as u64,
                }
                if !counted && got >= share {
                    counted = true;
                    let n = reached.fetch_add(1, Ordering::SeqCst) + 1;
                    eprintln!("sink-pause: {peer} delivered {got} bytes ({n}/{group})");
                }
            }
            eprintln!("sink-pause: {peer}: stopped reading after {got} bytes");
            // Never read again; the connection stays open until the process is killed.
            loop {
                std::thread::park();
            }
        });
    }
    Ok(())
}

fn wait(addr: &str, secs: &str) -> Result {
    let deadline = Instant::now() + Duration::from_secs_f64(secs.parse()?);
    let addr: SocketAddr = addr.parse()?;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(format!("{addr}: {e}").into()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn ping(ip: &str, text: &str) -> Result {
    use socket2::{Domain, Protocol, Socket, Type};
    let ip: std::net::IpAddr = ip.parse()?;
    let (domain, proto, request, reply) = match ip {
        std::net::IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
        std::net::IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128, 129),
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(proto))?;
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    socket.connect(&SocketAddr::new(ip, 0).into())?;
    let mut packet = vec![request, 0, 0, 0, 0, 0, 0, 7];
    packet.extend_from_slice(text.as_bytes());
    socket.send(&packet)?;
    let socket: UdpSocket = socket.into();
    let mut buf = [0u8; 2048];
    let n = socket.recv(&mut buf)?;
    if n < 8 || buf[0] != reply {
        return Err(format!("not an echo reply: type {}", buf[0]).into());
    }
    println!("reply={}", String::from_utf8_lossy(&buf[8..n]));
    Ok(())
}

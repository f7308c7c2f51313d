//! A tiny network probe for namespace tests (no external tools needed):
//!
//! * `ht-probe udp-echo ADDR` — echo every datagram back (runs until killed);
//! * `ht-probe tcp-echo ADDR` — echo every connection's bytes back (runs until killed);
//! * `ht-probe udp ADDR TEXT` — send TEXT, print the reply; exit 1 without one in 2 s;
//! * `ht-probe tcp ADDR TEXT` — connect, send TEXT, half-close, print the reply.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["udp-echo", addr] => udp_echo(addr),
        ["tcp-echo", addr] => tcp_echo(addr),
        ["udp", addr, text] => udp_once(addr, text),
        ["tcp", addr, text] => tcp_once(addr, text),
        _ => Err("usage: ht-probe (udp-echo|tcp-echo) ADDR | (udp|tcp) ADDR TEXT".into()),
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
    sock.connect(addr)?;
    sock.send(text.as_bytes())?;
    let mut buf = vec![0u8; 65536];
    let n = sock.recv(&mut buf)?;
    println!("{}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}

fn tcp_once(addr: &str, text: &str) -> Result {
    let addr: std::net::SocketAddr = addr.parse()?;
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(text.as_bytes())?;
    conn.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    println!("{reply}");
    Ok(())
}

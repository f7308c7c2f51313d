//! `ht-hold HOST:PORT`: hold one TCP connection to an echo server open and use it on
//! demand — the "idle connection" of the roaming tests (TESTPLAN §22).
//!
//! Connects, prints `connected local=ADDR`, then for every line read from stdin sends the
//! line (with its newline) and waits up to 30 s for the same bytes to come back, printing
//! `echo=LINE` (or `error=…` and exiting 1). Between lines the connection is idle for as
//! long as the caller waits. Exits 0 at the end of stdin.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr] = &args[..] else {
        eprintln!("usage: ht-hold HOST:PORT");
        return ExitCode::FAILURE;
    };
    match run(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error={e}");
            ExitCode::FAILURE
        }
    }
}

fn run(addr: &str) -> std::io::Result<()> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "connected local={}", conn.local_addr()?)?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line? + "\n";
        conn.write_all(line.as_bytes())?;
        let mut back = vec![0u8; line.len()];
        conn.read_exact(&mut back)?;
        if back != line.as_bytes() {
            return Err(std::io::Error::other(format!(
                "echo differs: sent {line:?}, got {:?}",
                String::from_utf8_lossy(&back)
            )));
        }
        write!(out, "echo={line}")?;
        out.flush()?;
    }
    Ok(())
}

//! 1 GiB through one flow between the stack and a second smoltcp instance acting
//! as the app's kernel, every byte verified. Both ends verify every checksum
//! (the stack on input, the app's smoltcp on receive).

mod common;

use std::time::Instant;

use common::*;
use netstack::Config;

const GIB: u64 = 1 << 30;

/// Fills `b` with the pattern starting at stream offset `at`.
fn fill(seed: u8, at: u64, b: &mut [u8]) {
    for (i, x) in b.iter_mut().enumerate() {
        *x = pattern(seed, at + i as u64);
    }
}

fn check(seed: u8, at: u64, b: &[u8]) {
    for (i, x) in b.iter().enumerate() {
        if *x != pattern(seed, at + i as u64) {
            panic!("byte {} corrupted", at + i as u64);
        }
    }
}

fn pair(mtu: usize) -> (Pair, smoltcp::iface::SocketHandle, netstack::TcpFlowId) {
    let buf = 1 << 20;
    let config = Config {
        mtu,
        tcp_rx_buffer: buf,
        tcp_tx_buffer: buf,
        tcp_ack_delay: None,
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    pair.check = false;
    let (h, id) = pair.open(dst(false, 443), 40100, buf);
    (pair, h, id)
}

#[test]
fn one_gib_app_to_stack() {
    let (mut pair, h, id) = pair(65535);
    let started = Instant::now();
    let (mut sent, mut recv) = (0u64, 0u64);
    let mut buf = vec![0u8; 256 * 1024];
    let done = pair.run_until(10_000_000, |p| {
        let s = p.app.sock(h);
        while sent < GIB && s.can_send() {
            let n = s
                .send(|b| {
                    let n = b.len().min((GIB - sent) as usize);
                    fill(9, sent, &mut b[..n]);
                    (n, n)
                })
                .unwrap();
            sent += n as u64;
        }
        loop {
            let n = p.stack.tcp_recv(id, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            check(9, recv, &buf[..n]);
            recv += n as u64;
        }
        recv == GIB
    });
    assert!(done, "moved {recv} of {GIB}");
    eprintln!(
        "1 GiB app→stack in {:?} ({} packets to stack)",
        started.elapsed(),
        pair.packets_to_stack
    );
}

#[test]
fn one_gib_stack_to_app() {
    let (mut pair, h, id) = pair(65535);
    let started = Instant::now();
    let (mut sent, mut recv) = (0u64, 0u64);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut pending = 0..0;
    let done = pair.run_until(10_000_000, |p| {
        loop {
            if pending.is_empty() && sent < GIB {
                let n = chunk.len().min((GIB - sent) as usize);
                fill(4, sent, &mut chunk[..n]);
                pending = 0..n;
            }
            if pending.is_empty() {
                break;
            }
            let took = p.stack.tcp_send(id, &chunk[pending.clone()]).unwrap();
            pending.start += took;
            sent += took as u64;
            if took == 0 {
                break;
            }
        }
        let s = p.app.sock(h);
        while s.can_recv() {
            let n = s
                .recv(|b| {
                    check(4, recv, b);
                    (b.len(), b.len())
                })
                .unwrap();
            recv += n as u64;
        }
        recv == GIB
    });
    assert!(done, "moved {recv} of {GIB}");
    eprintln!(
        "1 GiB stack→app in {:?} ({} packets to app)",
        started.elapsed(),
        pair.packets_to_app
    );
}

//! 1 GiB through one flow between the stack and a second smoltcp instance acting
//! as the app's kernel, every byte verified. Both ends verify every checksum
//! (the stack on input, the app's smoltcp on receive).

mod common;

use std::time::Instant;

use common::*;
use netstack::{Config, TcpFlowId};
use smoltcp::iface::SocketHandle;

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

fn pair(mtu: usize) -> (Pair, SocketHandle, TcpFlowId) {
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

/// Moves `total` bytes app → stack through `pair`, checking every byte; whether all
/// arrived.
fn app_to_stack(pair: &mut Pair, h: SocketHandle, id: TcpFlowId, seed: u8, total: u64) -> bool {
    let (mut sent, mut recv) = (0u64, 0u64);
    let mut buf = vec![0u8; 256 * 1024];
    let done = pair.run_until(10_000_000, |p| {
        let s = p.app.sock(h);
        while sent < total && s.can_send() {
            let n = s
                .send(|b| {
                    let n = b.len().min((total - sent) as usize);
                    fill(seed, sent, &mut b[..n]);
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
            check(seed, recv, &buf[..n]);
            recv += n as u64;
        }
        recv == total
    });
    assert!(done, "moved {recv} of {total} app→stack");
    done
}

/// Moves `total` bytes stack → app through `pair`, checking every byte; whether all
/// arrived.
fn stack_to_app(pair: &mut Pair, h: SocketHandle, id: TcpFlowId, seed: u8, total: u64) -> bool {
    let (mut sent, mut recv) = (0u64, 0u64);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut pending = 0..0;
    let done = pair.run_until(10_000_000, |p| {
        loop {
            if pending.is_empty() && sent < total {
                let n = chunk.len().min((total - sent) as usize);
                fill(seed, sent, &mut chunk[..n]);
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
                    check(seed, recv, b);
                    (b.len(), b.len())
                })
                .unwrap();
            recv += n as u64;
        }
        recv == total
    });
    assert!(done, "moved {recv} of {total} stack→app");
    done
}

#[test]
fn one_gib_app_to_stack() {
    let (mut pair, h, id) = pair(65535);
    let started = Instant::now();
    app_to_stack(&mut pair, h, id, 9, GIB);
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
    stack_to_app(&mut pair, h, id, 4, GIB);
    eprintln!(
        "1 GiB stack→app in {:?} ({} packets to app)",
        started.elapsed(),
        pair.packets_to_app
    );
}

/// Every packet the stack writes is handed back (`Stack::recycle`) as a buffer full of
/// garbage with a spare capacity no fresh buffer has: later packets are built in those
/// buffers, and every one of them must still be a valid packet (checked by `parse_out`
/// and by the app's smoltcp) carrying the right bytes, both ways.
#[test]
fn recycled_buffers_full_of_garbage_make_valid_packets() {
    let (mut pair, h, id) = pair(65535);
    pair.check = true;
    pair.recycle_garbage = true;
    const TOTAL: u64 = 16 << 20;
    stack_to_app(&mut pair, h, id, 1, TOTAL);
    app_to_stack(&mut pair, h, id, 2, TOTAL);
    let (reused, out) = (pair.packets_in_recycled, pair.packets_to_app);
    eprintln!("{reused} of {out} packets to the app were built in recycled buffers");
    assert!(reused * 2 >= out, "only {reused} of {out} reused a buffer");
}

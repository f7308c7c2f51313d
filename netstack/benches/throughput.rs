//! Bulk TCP through the stack in memory, and memory per idle flow.
//!
//! `cargo bench -p netstack --bench throughput` (add `-- quick` for one run each).
//!
//! The app side is a second smoltcp instance on the same core, so "pipeline"
//! figures include its cost; "stack" figures count only time inside `Stack` calls.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use netstack::{Config, Event, Stack};

const RUNS: usize = 5;

struct Run {
    pipeline_gbps: f64,
    stack_gbps: f64,
}

fn bulk(mtu: usize, upload: bool, bytes: u64) -> Run {
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
    let chunk = vec![0x5au8; 256 * 1024];
    let mut sink = vec![0u8; 256 * 1024];
    let (mut sent, mut recv) = (0u64, 0u64);
    let mut api_time = Duration::ZERO;
    pair.stack_time = Duration::ZERO;
    let started = Instant::now();
    let done = pair.run_until(50_000_000, |p| {
        let t = Instant::now();
        if upload {
            let s = p.app.sock(h);
            while sent < bytes && s.can_send() {
                sent += s
                    .send_slice(&chunk[..chunk.len().min((bytes - sent) as usize)])
                    .unwrap() as u64;
            }
            let t = Instant::now();
            loop {
                let n = p.stack.tcp_recv(id, &mut sink).unwrap();
                recv += n as u64;
                if n == 0 {
                    break;
                }
            }
            api_time += t.elapsed();
        } else {
            while sent < bytes {
                let n = p
                    .stack
                    .tcp_send(id, &chunk[..chunk.len().min((bytes - sent) as usize)])
                    .unwrap();
                sent += n as u64;
                if n == 0 {
                    break;
                }
            }
            api_time += t.elapsed();
            let s = p.app.sock(h);
            while s.can_recv() {
                recv += s.recv_slice(&mut sink).unwrap() as u64;
            }
        }
        recv == bytes
    });
    assert!(done);
    let secs = started.elapsed().as_secs_f64();
    let stack_secs = (pair.stack_time + api_time).as_secs_f64();
    let bits = bytes as f64 * 8.0;
    Run {
        pipeline_gbps: bits / secs / 1e9,
        stack_gbps: bits / stack_secs / 1e9,
    }
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Opens `n` idle flows by hand (handshake + ACK) and reports
/// (accounted buffer bytes per flow, RSS growth per flow).
fn idle_flows(n: u32, buffer: usize) -> (usize, usize) {
    let now = Instant::now();
    let config = Config {
        tcp_rx_buffer: buffer,
        tcp_tx_buffer: buffer,
        max_tcp_flows: 16_384,
        max_buffer_memory: 1 << 40,
        ..Config::default()
    };
    let rss_before = rss_bytes();
    let mut stack = Stack::new(config, now).unwrap();
    let key = |i: u32| {
        (
            app(false, 10_000 + (i % 50_000) as u16),
            dst(false, 1 + (i / 50_000) as u16),
        )
    };
    for i in 0..n {
        let (s, d) = key(i);
        stack.handle_packet(now, &syn(s, d, i));
    }
    while let Some(ev) = stack.poll_event() {
        if let Event::TcpIncoming { id, .. } = ev {
            stack.tcp_accept(id).unwrap();
        }
    }
    while let Some(p) = stack.poll_transmit(now) {
        let t = tcp_of(parse_out(&p));
        stack.handle_packet(
            now,
            &tcp_pkt(
                t.dst,
                t.src,
                t.ack.unwrap(),
                Some(t.seq + 1),
                NONE,
                502,
                &[],
                &[],
            ),
        );
    }
    while stack.poll_event().is_some() {}
    assert_eq!(stack.tcp_flow_count(), n as usize);
    let rss = rss_bytes().saturating_sub(rss_before);
    let accounted = stack.buffer_memory() / n as usize;
    drop(stack);
    (accounted, rss / n as usize)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let runs = if quick { 1 } else { RUNS };
    println!("netstack throughput, one core, {runs} runs each, medians");
    // Idle flows first, so the bulk runs' freed buffers do not skew RSS.
    for buffer in [128 * 1024, 16 * 1024] {
        let results: Vec<(usize, usize)> = (0..runs).map(|_| idle_flows(10_000, buffer)).collect();
        println!(
            "  10000 idle flows, {} KiB rx + {} KiB tx buffers: accounted {} bytes/flow, RSS growth {} bytes/flow",
            buffer / 1024,
            buffer / 1024,
            results[0].0,
            median(results.iter().map(|r| r.1 as f64).collect()) as usize,
        );
    }
    for mtu in [1500usize, 9000, 65535] {
        let bytes: u64 = if mtu == 1500 { 256 << 20 } else { 1 << 30 };
        for upload in [true, false] {
            let results: Vec<Run> = (0..runs).map(|_| bulk(mtu, upload, bytes)).collect();
            let dir = if upload { "app→stack" } else { "stack→app" };
            println!(
                "  MTU {mtu:>5} {dir}: stack {:6.2} Gbit/s per core, pipeline (stack + app-side smoltcp) {:6.2} Gbit/s",
                median(results.iter().map(|r| r.stack_gbps).collect()),
                median(results.iter().map(|r| r.pipeline_gbps).collect()),
            );
        }
    }
}

//! What an idle flow costs in resident memory, with the default configuration:
//! 10,000 concurrent flows that each moved a few bytes each way must fit (no flow
//! refused by the buffer budget), cost a small fraction of their configured buffers in
//! RSS, and give that memory back when they close.
//!
//! One test in its own binary, so no other test allocates while RSS is read.

mod common;

use std::collections::HashMap;

use common::*;
use netstack::{Config, Event, Stack};

/// Resident set size of this process, in KiB (Linux `/proc/self/status`).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

#[test]
fn ten_thousand_idle_flows_cost_little_and_give_it_back() {
    let now = base();
    let config = Config {
        tcp_ack_delay: None,
        ..Config::default()
    };
    let (rx, tx) = (config.tcp_rx_buffer, config.tcp_tx_buffer);
    let mut stack = Stack::new(config, now).unwrap();
    let n = 10_000u32;
    let key = |i: u32| {
        (
            app(i % 2 == 1, 10_000 + (i / 2) as u16),
            dst(i % 2 == 1, 443),
        )
    };
    let before = rss_kib();

    for i in 0..n {
        let (s, d) = key(i);
        stack.handle_packet(now, &syn(s, d, i));
    }
    let mut ids = HashMap::new();
    for ev in drain_events(&mut stack) {
        let Event::TcpIncoming { id, src, dst } = ev else {
            panic!("{ev:?}")
        };
        ids.insert((src, dst), id);
        stack.tcp_accept(id).unwrap();
    }
    assert_eq!(ids.len(), n as usize, "flows refused: {:?}", stack.stats());
    let mut isn = HashMap::new();
    for o in drain_out(&mut stack, now) {
        let t = tcp_of(o);
        assert!(t.syn, "{t:?}");
        isn.insert((t.dst, t.src), t.seq);
    }
    assert_eq!(
        isn.len(),
        n as usize,
        "SYN-ACKs missing: {:?}",
        stack.stats()
    );
    // 4 bytes each way on every flow, as an idle connection after a request would.
    for i in 0..n {
        let (s, d) = key(i);
        let p = tcp_pkt(s, d, i + 1, Some(isn[&(s, d)] + 1), NONE, 502, &[], b"ping");
        stack.handle_packet(now, &p);
    }
    let mut buf = [0u8; 8];
    let mut readable = 0;
    for ev in drain_events(&mut stack) {
        if let Event::TcpReadable { id } = ev {
            readable += 1;
            assert_eq!(stack.tcp_recv(id, &mut buf).unwrap(), 4);
            assert_eq!(stack.tcp_send(id, b"pong").unwrap(), 4);
        }
    }
    assert_eq!(readable, n);
    let echoed = drain_out(&mut stack, now)
        .into_iter()
        .filter(|o| !tcp_of(o.clone()).payload.is_empty())
        .count();
    assert_eq!(echoed, n as usize);
    assert_eq!(stack.tcp_flow_count(), n as usize);

    let open = rss_kib();
    let per_flow = (open.saturating_sub(before)) as f64 / f64::from(n);
    let configured = (rx + tx) as f64 / 1024.0;
    println!(
        "{n} idle flows: RSS {before} → {open} KiB, {per_flow:.1} KiB per flow \
         (configured buffers {configured:.0} KiB per flow)"
    );
    assert!(
        per_flow <= 24.0,
        "an idle flow costs {per_flow:.1} KiB of RSS (configured {configured:.0} KiB): \
         buffers must be committed lazily"
    );

    for id in ids.values() {
        stack.tcp_abort(*id).unwrap();
    }
    drain_out(&mut stack, now);
    drain_events(&mut stack);
    assert_eq!(stack.tcp_flow_count(), 0);
    assert_eq!(stack.buffer_memory(), 0);
    let closed = rss_kib();
    println!("after closing: RSS {closed} KiB");
    assert!(
        closed.saturating_sub(before) <= (open - before) / 4 + 1024,
        "closed flows keep their memory: RSS {before} → {open} → {closed} KiB"
    );
}

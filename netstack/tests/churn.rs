//! Short flows one after another, as a web client or the benchmark's connect+RR+close
//! loop makes them: each connects, sends 64 bytes, gets 64 back, and closes (the app
//! first, as HTTP/1.0 clients do). Every flow must be reclaimed with nothing left
//! behind, at the default configuration (16,384 flows, so every shard exists).
//!
//! It also prints the wall time spent inside `Stack` calls per flow: run with
//! `cargo test --release -p netstack --test churn -- --nocapture` to compare changes
//! to the per-packet and per-flow paths (a benchmark aid; nothing here is timed).

mod common;

use common::*;
use netstack::{Config, Event};
use smoltcp::socket::tcp::State;

const FLOWS: u16 = 20_000;
const MESSAGE: usize = 64;

#[test]
fn twenty_thousand_short_flows_are_each_reclaimed() {
    let config = Config {
        tcp_ack_delay: None,
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    pair.check = false;
    let request = [0x3c; MESSAGE];
    let mut buf = [0u8; 2 * MESSAGE];
    for i in 0..FLOWS {
        let port = 10_000 + i % 40_000;
        let (h, id) = pair.open(dst(i % 2 == 1, 443), port, 4096);
        assert_eq!(pair.app.sock(h).send_slice(&request).unwrap(), MESSAGE);
        let mut got = 0;
        let ok = pair.run_until(1000, |p| {
            for ev in p.take_events() {
                if let Event::TcpReadable { id: r } = ev {
                    assert_eq!(r, id);
                    got += p.stack.tcp_recv(id, &mut buf).unwrap();
                }
            }
            got == MESSAGE
        });
        assert!(ok, "flow {i}: request not delivered ({got} bytes)");
        assert_eq!(pair.stack.tcp_send(id, &buf[..MESSAGE]).unwrap(), MESSAGE);
        let ok = pair.run_until(1000, |p| p.app.sock(h).recv_queue() == MESSAGE);
        assert!(ok, "flow {i}: reply not delivered");
        let mut reply = [0u8; MESSAGE];
        assert_eq!(pair.app.sock(h).recv_slice(&mut reply).unwrap(), MESSAGE);
        assert_eq!(reply, request);
        pair.app.sock(h).close();
        let ok = pair.run_until(1000, |p| {
            for ev in p.take_events() {
                if let Event::TcpPeerFin { id: r } = ev {
                    assert_eq!(r, id);
                    p.stack.tcp_shutdown_write(id).unwrap();
                }
            }
            p.stack.tcp_flow_count() == 0
                && matches!(p.app.sock(h).state(), State::TimeWait | State::Closed)
        });
        assert!(
            ok,
            "flow {i}: not reclaimed ({} flows, app {})",
            pair.stack.tcp_flow_count(),
            pair.app.sock(h).state()
        );
        pair.app.sockets.remove(h);
    }
    let stats = pair.stack.stats();
    assert_eq!(stats.tcp_flows_accepted, u64::from(FLOWS));
    assert_eq!(stats.tcp_flows_reclaimed, u64::from(FLOWS));
    assert_eq!(stats.dropped_checksum + stats.dropped_malformed, 0);
    println!(
        "{FLOWS} short flows: {:.2} µs in Stack calls per flow ({} packets to the app, {} to the stack)",
        pair.stack_time.as_secs_f64() * 1e6 / f64::from(FLOWS),
        pair.packets_to_app,
        pair.packets_to_stack,
    );
}

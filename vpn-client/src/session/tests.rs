//! The whole driver on loopback against the real exit node started in-process: apps are a
//! smoltcp host behind a channel-backed packet device (no TUN, no root), the legs are real
//! WebSockets, the destination is a TCP echo server the test starts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::*;
use crate::config::LegConfig;
use crate::device::ChannelDevice;
use crate::flows::tests::AppHost;

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

struct Exit {
    node: exit_node::node::Node,
    dir: std::path::PathBuf,
    exit_public: [u8; 32],
    client_private: [u8; 32],
}

impl Drop for Exit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn exit_node() -> Exit {
    let dir = std::env::temp_dir().join(format!("ht-client-loopback-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (exit_private, exit_public) = proto::generate_keypair();
    let (client_private, client_public) = proto::generate_keypair();
    let enc = crate::keys::encode_key;
    std::fs::write(dir.join("exit.key"), enc(&exit_private)).unwrap();
    let text = format!(
        r#"
private_key_file = "exit.key"
[listen.up]
address = "127.0.0.1:0"
path = "/u"
[listen.down]
address = "127.0.0.2:0"
path = "/d"
[[clients]]
name = "tester"
public_key = "{}"
[egress]
allow_cidrs = ["127.0.0.0/8"]
allow_own_addresses = ["127.0.0.1/32"]
[dns]
upstreams = ["127.0.0.1:9"]
[log]
stats_interval = "0s"
"#,
        enc(&client_public)
    );
    let path = dir.join("exit-node.toml");
    std::fs::write(&path, text).unwrap();
    let config = exit_node::config::Config::load(&path).unwrap();
    let node = exit_node::node::start(&config, &dir).await.unwrap();
    Exit {
        node,
        dir,
        exit_public,
        client_private,
    }
}

fn leg(addr: SocketAddr, path: &str) -> (LegEndpoint, String) {
    let url = format!("ws://{addr}{path}");
    let cfg = LegConfig {
        url: url.clone(),
        connect_address: None,
        sni: None,
        ca_file: None,
        pin_sha256: None,
        insecure: false,
    };
    (
        LegEndpoint::new(&cfg, 256 * 1024, Duration::from_secs(5)).unwrap(),
        url,
    )
}

/// Ask the driver for a status snapshot.
async fn status(tx: &mpsc::Sender<StatusRequest>) -> Status {
    let (req, answer) = oneshot::channel();
    tx.send(req).await.unwrap();
    answer.await.unwrap()
}

/// Wait until the session exists and both legs are attached: a SYN that arrives before
/// has no session to open a stream on and is refused with a RST (as it would be for a
/// real app), which the app host does not retry.
async fn wait_both_legs_up(tx: &mpsc::Sender<StatusRequest>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = status(tx).await;
        let up = st.legs.iter().all(|l| l.state == "up");
        if st.session.is_some() && up {
            return;
        }
        assert!(Instant::now() < deadline, "legs did not come up: {st:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_the_real_exit_node_with_split_legs() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let exit = exit_node().await;
    let echo = echo_server().await;
    let config = DriverConfig {
        client: ClientConfig {
            private_key: exit.client_private,
            exit_public_key: exit.exit_public,
            psk: None,
            settings: proto::Settings::default(),
        },
        legs: [
            leg(exit.node.listening.up, "/u"),
            leg(exit.node.listening.down, "/d"),
        ],
        fwmark: None,
        reconnect: (Duration::from_millis(100), Duration::from_secs(1)),
        bridge: BridgeConfig::default(),
        netstack: netstack::Config::default(),
        stats_interval: Duration::ZERO,
        kill_switch: false,
        stall_timeout: Duration::from_secs(6),
    };
    let (dev, to_driver, mut from_driver) = ChannelDevice::new();
    let (status_tx, status_rx) = mpsc::channel(4);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let driver = tokio::spawn(run(config, dev, status_rx, async {
        let _ = stop_rx.await;
    }));

    wait_both_legs_up(&status_tx).await;
    let mut app = AppHost::new();
    let len = 2 * 1024 * 1024;
    let c = app.connect(echo, len, 0);
    let base = Instant::now();
    let deadline = base + Duration::from_secs(30);
    while app.conns[c].recv < len {
        assert!(
            Instant::now() < deadline,
            "echo stalled at {} of {len}",
            app.conns[c].recv
        );
        let t = smoltcp::time::Instant::from_micros(base.elapsed().as_micros() as i64);
        app.work();
        app.iface.poll(t, &mut app.dev, &mut app.sockets);
        while let Some(p) = app.dev.tx.pop_front() {
            to_driver.send(p).await.unwrap();
        }
        match tokio::time::timeout(Duration::from_millis(5), from_driver.recv()).await {
            Ok(Some(p)) => {
                app.dev.rx.push_back(p);
                while let Ok(p) = from_driver.try_recv() {
                    app.dev.rx.push_back(p);
                }
            }
            Ok(None) => panic!("driver stopped"),
            Err(_) => {}
        }
    }
    assert!(!app.conns[c].corrupt, "echoed bytes differ");

    let st = status(&status_tx).await;
    assert!(st.session.is_some());
    let (up, down) = (&st.legs[0], &st.legs[1]);
    assert_eq!((up.state.as_str(), down.state.as_str()), ("up", "up"));
    // Split path: client→exit bytes only on the up leg, exit→client only on the down leg.
    assert!(up.bytes_tx > len && down.bytes_rx > len, "{st:?}");
    assert_eq!(
        up.bytes_rx, 0,
        "nothing may come back on the up leg: {st:?}"
    );
    assert_eq!(
        down.bytes_tx, 0,
        "nothing may go out on the down leg: {st:?}"
    );
    assert!(st.render().contains("kill switch: off"));
    // Stats lines are off: throughput is averaged since start, and the echo moved bytes.
    let tp = st.throughput;
    assert!(tp.up_bytes_per_s > 0 && tp.down_bytes_per_s > 0, "{tp:?}");
    assert!(st.render().contains("throughput:"));
    let legs_fresh = st.legs.iter().all(|l| l.stall_reconnects == 0);
    assert!(legs_fresh, "no stall on a healthy loopback: {st:?}");

    let started = Instant::now();
    stop_tx.send(()).unwrap();
    driver.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took too long"
    );
}

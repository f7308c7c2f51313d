use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

#[derive(Default)]
struct FakeSessions {
    kicked: Mutex<Vec<String>>,
}

impl SessionAdmin for FakeSessions {
    fn list_json(&self) -> String {
        "[{\"id\":\"s1\"}]".into()
    }
    fn kick(&self, id: &str) -> bool {
        self.kicked.lock().unwrap().push(id.to_owned());
        id == "s1"
    }
}

async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn health_ready_metrics_and_sessions() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sessions = Arc::new(FakeSessions::default());
    let admin = Admin {
        metrics: Metrics::default(),
        ready: Arc::new(AtomicBool::new(false)),
        sessions: sessions.clone(),
    };
    let (metrics, ready) = (admin.metrics.clone(), admin.ready.clone());
    let task = tokio::spawn(serve(listener, admin));

    assert!(
        get(addr, "GET", "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        get(addr, "GET", "/readyz")
            .await
            .starts_with("HTTP/1.1 503")
    );
    ready.store(true, Ordering::Relaxed);
    assert!(
        get(addr, "GET", "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    metrics.sessions.set(3);
    metrics
        .bytes
        .get_or_create(&DirectionLabel {
            direction: Direction::Down,
        })
        .inc_by(1234);
    metrics
        .egress_refused
        .get_or_create(&ReasonLabel { reason: "private" })
        .inc();
    let body = get(addr, "GET", "/metrics").await;
    assert!(body.contains("half_tunnel_exit_sessions 3"), "{body}");
    assert!(
        body.contains("half_tunnel_exit_tunnel_bytes_total{direction=\"down\"} 1234"),
        "{body}"
    );
    assert!(
        body.contains("half_tunnel_exit_egress_refused_total{reason=\"private\"} 1"),
        "{body}"
    );

    assert!(
        get(addr, "GET", "/sessions")
            .await
            .ends_with("[{\"id\":\"s1\"}]")
    );
    assert!(
        get(addr, "POST", "/sessions/s1/kick")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        get(addr, "POST", "/sessions/zz/kick")
            .await
            .starts_with("HTTP/1.1 404")
    );
    assert_eq!(
        *sessions.kicked.lock().unwrap(),
        vec!["s1".to_owned(), "zz".to_owned()]
    );
    assert!(get(addr, "GET", "/other").await.starts_with("HTTP/1.1 404"));
    task.abort();
}

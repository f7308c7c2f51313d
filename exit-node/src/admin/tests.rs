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
        id == "s1" || id == "stuck"
    }
    fn is_running(&self, id: &str) -> bool {
        id == "stuck"
    }
}

async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    request(addr, method, path, "").await
}

async fn request(addr: std::net::SocketAddr, method: &str, path: &str, headers: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n{headers}\r\n"
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
        token: None,
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

/// Issue 20 §5, from the side of a client whose traffic reaches the admin port: with a
/// token, nothing but the health checks answers without it.
#[tokio::test]
async fn with_a_token_only_the_health_checks_are_open() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sessions = Arc::new(FakeSessions::default());
    let admin = Admin {
        metrics: Metrics::default(),
        ready: Arc::new(AtomicBool::new(true)),
        sessions: sessions.clone(),
        token: Some(AdminToken::parse("s3cret-token-0123456789\n").unwrap()),
    };
    let task = tokio::spawn(serve(listener, admin));
    let good = "Authorization: Bearer s3cret-token-0123456789\r\n";
    for path in ["/healthz", "/readyz"] {
        assert!(
            get(addr, "GET", path).await.starts_with("HTTP/1.1 200"),
            "{path}"
        );
    }
    let attempts = [
        "",
        "Authorization: Bearer wrong-token-000000000000\r\n",
        "Authorization: Bearer s3cret-token-012345678\r\n",
        "Authorization: Bearer s3cret-token-01234567890\r\n",
        "Authorization: s3cret-token-0123456789\r\n",
        "Authorization: Basic czNjcmV0\r\n",
    ];
    for headers in attempts {
        for (method, path) in [
            ("GET", "/metrics"),
            ("GET", "/sessions"),
            ("POST", "/sessions/s1/kick"),
            ("GET", "/other"),
        ] {
            let resp = request(addr, method, path, headers).await;
            assert!(
                resp.starts_with("HTTP/1.1 401"),
                "{method} {path} with {headers:?}: {resp}"
            );
            assert!(
                !resp.contains("half_tunnel") && !resp.contains("s1\""),
                "{resp}"
            );
        }
    }
    assert!(
        sessions.kicked.lock().unwrap().is_empty(),
        "a kick got through"
    );
    assert!(
        request(addr, "GET", "/metrics", good)
            .await
            .contains("half_tunnel_exit_sessions")
    );
    assert!(
        request(addr, "GET", "/sessions", good)
            .await
            .ends_with("[{\"id\":\"s1\"}]")
    );
    let kicked = request(addr, "POST", "/sessions/s1/kick", good).await;
    assert!(
        kicked.starts_with("HTTP/1.1 200") && kicked.ends_with("closed\n"),
        "{kicked}"
    );
    // A session that does not end within the wait: the answer says so instead of "closed".
    let stuck = request(addr, "POST", "/sessions/stuck/kick", good).await;
    assert!(stuck.starts_with("HTTP/1.1 202"), "{stuck}");
    task.abort();
}

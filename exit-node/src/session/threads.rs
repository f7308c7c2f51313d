//! Session threads: every task of one session (its driver, its legs' readers and writers,
//! its dials and destination sockets) runs on one thread, a current-thread runtime of its
//! own, while sessions spread over the threads.
//!
//! On tokio's work-stealing runtime each hand-off inside a session (leg reader → driver →
//! destination writer; destination reader → driver → leg writer) could land on another
//! worker, a futex wake each; a request/response crossed threads several times.
//!
//! A connection is placed when it is accepted, before TLS: its socket moves to the thread
//! with the fewest sessions and connections being set up, its TLS handshake, upgrade and
//! first message run there, and a session its up leg starts runs there too, so the up
//! leg's socket is served by the session's own reactor. A down leg stays on the thread
//! that accepted it (which session it joins is known only from its first message); only
//! its readiness crosses threads. The listeners and admin stay on the main runtime.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// One session thread: its runtime's handle, how many sessions it runs and connections
/// it sets up, and the signal that ends it.
#[derive(Debug)]
struct Thread {
    handle: Handle,
    sessions: Arc<AtomicUsize>,
    connecting: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

impl Thread {
    fn load(&self) -> usize {
        self.sessions.load(Ordering::Relaxed) + self.connecting.load(Ordering::Relaxed)
    }
}

/// The session threads of a node; dropping it ends them (their tasks are dropped).
#[derive(Debug)]
pub struct SessionThreads {
    threads: Vec<Thread>,
}

impl SessionThreads {
    /// Starts `n` threads named `ht-session-<i>`.
    pub fn start(n: usize) -> std::io::Result<SessionThreads> {
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("ht-session-{i}"))
                .spawn(move || {
                    // Ends when the sender is sent on or dropped.
                    let _ = runtime.block_on(stopped);
                })?;
            threads.push(Thread {
                handle,
                sessions: Arc::new(AtomicUsize::new(0)),
                connecting: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
            });
        }
        Ok(SessionThreads { threads })
    }

    /// The least loaded thread (sessions plus connections being set up).
    fn least_loaded(&self) -> Option<usize> {
        (0..self.threads.len()).min_by_key(|&i| self.threads[i].load())
    }

    /// Moves an accepted connection to the least loaded thread and runs `setup(tcp,
    /// home)` there, `home` being the thread's index (for [`Self::spawn_on`] and
    /// [`Self::spawn_session`]). A socket that cannot leave the accepting runtime is
    /// closed, with a log line.
    pub fn place_connection<F, Fut>(&self, tcp: TcpStream, setup: F)
    where
        F: FnOnce(TcpStream, Option<usize>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(home) = self.least_loaded() else {
            tokio::spawn(setup(tcp, None));
            return;
        };
        let std = match tcp.into_std() {
            Ok(std) => std,
            Err(e) => {
                tracing::warn!(error = %e, "could not move an accepted connection; closed");
                return;
            }
        };
        let thread = &self.threads[home];
        let count = Arc::clone(&thread.connecting);
        count.fetch_add(1, Ordering::Relaxed);
        thread.handle.spawn(async move {
            let _setting_up = Running(count);
            // Registers the socket with this thread's reactor.
            match TcpStream::from_std(std) {
                Ok(tcp) => setup(tcp, Some(home)).await,
                Err(e) => tracing::warn!(error = %e, "could not register an accepted connection"),
            }
        });
    }

    /// Runs `task` on thread `home` (a connection's; the current runtime if there is no
    /// such thread).
    pub fn spawn_on(&self, home: Option<usize>, task: impl Future<Output = ()> + Send + 'static) {
        match home.and_then(|i| self.threads.get(i)) {
            Some(thread) => drop(thread.handle.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    /// Runs `session` on thread `home` (its up leg's), or if there is none on the least
    /// loaded thread.
    pub fn spawn_session(
        &self,
        home: Option<usize>,
        session: impl Future<Output = ()> + Send + 'static,
    ) {
        let Some(thread) = home
            .filter(|&i| i < self.threads.len())
            .or_else(|| self.least_loaded())
            .map(|i| &self.threads[i])
        else {
            tokio::spawn(session);
            return;
        };
        let count = Arc::clone(&thread.sessions);
        count.fetch_add(1, Ordering::Relaxed);
        thread.handle.spawn(async move {
            let _running = Running(count);
            session.await;
        });
    }

    /// Sessions running and connections being set up on each thread.
    #[cfg(test)]
    fn load(&self) -> Vec<usize> {
        self.threads.iter().map(Thread::load).collect()
    }
}

impl Drop for SessionThreads {
    fn drop(&mut self) {
        for t in &mut self.threads {
            if let Some(stop) = t.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

/// Counts a session (or a connection being set up) on its thread until its future ends
/// (or is dropped).
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("").to_owned()
    }

    #[tokio::test]
    async fn a_sessions_tasks_stay_on_its_thread_and_sessions_spread() {
        let threads = SessionThreads::start(2).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (release, hold) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let tx = tx.clone();
            let mut hold = hold.clone();
            threads.spawn_session(None, async move {
                let main = thread_name();
                // A task the session spawns runs on the session's thread too.
                let child = tokio::spawn(async { thread_name() }).await.unwrap();
                tx.send((main, child)).unwrap();
                let _ = hold.wait_for(|&go| go).await;
            });
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (main, child) = rx.recv().await.unwrap();
            assert!(main.starts_with("ht-session-"), "{main}");
            assert_eq!(main, child, "a session's spawned task left its thread");
            seen.push(main);
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "ht-session-0",
                "ht-session-0",
                "ht-session-1",
                "ht-session-1"
            ],
            "the fewest-sessions thread takes the next"
        );
        assert_eq!(threads.load(), [2, 2]);
        release.send(true).unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while threads.load() != [0, 0] && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            threads.load(),
            [0, 0],
            "ended sessions are no longer counted"
        );
    }
}

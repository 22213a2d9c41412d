//! An axum server on 127.0.0.1 running on its own thread and runtime, so it keeps answering while a test
//! blocks its own thread (a `std::process::Command` running kubectl, a current-thread `#[tokio::test]`),
//! and stops deterministically when its handle is dropped.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tokio::sync::watch;

/// How long in-flight requests get to finish at shutdown before their tasks are cancelled.
const GRACE: Duration = Duration::from_secs(2);

pub(crate) struct ServerThread {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Binds `127.0.0.1:<port>` (0: a free port) and serves the router `make_router` builds; the router gets
    /// a receiver that turns true at shutdown, for long-lived responses (watches, long polls) to end on.
    pub(crate) fn spawn(
        name: &str,
        port: u16,
        make_router: impl FnOnce(watch::Receiver<bool>, SocketAddr) -> Router + Send + 'static,
    ) -> anyhow::Result<Self> {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("binding 127.0.0.1:{port}"))?;
        listener.set_nonblocking(true).context("making the listener non-blocking")?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the server runtime")?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener).context("registering the listener")?
        };
        let (shutdown, stop) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    let router = make_router(stop.clone(), addr);
                    let mut graceful = stop.clone();
                    let mut hard = stop;
                    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
                        let _ = graceful.wait_for(|s| *s).await;
                    });
                    tokio::select! {
                        result = server => if let Err(e) = result { eprintln!("{addr}: server error: {e}") },
                        _ = async {
                            let _ = hard.wait_for(|s| *s).await;
                            tokio::time::sleep(GRACE).await;
                        } => {}
                    }
                });
                // Dropping the runtime here cancels connection tasks still open after the grace period.
            })
            .context("spawning the server thread")?;
        Ok(Self { addr, shutdown, thread: Some(thread) })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends long-lived responses, and waits (at most the grace period) for the thread.
    pub(crate) fn stop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

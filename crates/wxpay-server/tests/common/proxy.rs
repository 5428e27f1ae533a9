//! A TCP proxy with an outage switch, to put between the server and PostgreSQL or Redis.
//!
//! "Down" closes every proxied connection at once and accepts-then-closes new ones (the peer sees
//! its connection die, as when the dependency crashes or a network path breaks); "up" forwards
//! normally again. The server under test keeps running throughout, so a test can check that it
//! fails fast while the dependency is gone and recovers by itself when it is back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct TcpProxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on 127.0.0.1, port 0, forwarding to `target` (`host:port`); starts up.
    pub async fn start(target: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let (up, _) = watch::channel(true);
        let accepted = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            target.to_owned(),
            up.clone(),
            Arc::clone(&accepted),
            Arc::clone(&refused),
        ));
        TcpProxy { addr, up, accepted, refused, task }
    }

    /// For a URL's host and port (both the proxy's address).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The outage: closes every open connection and refuses new ones until [`TcpProxy::up`].
    pub fn down(&self) {
        self.up.send_replace(false);
    }

    pub fn up(&self) {
        self.up.send_replace(true);
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed at once because the proxy was down.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Stops accepting; open connections end too (their switch becomes "down" for good).
        self.up.send_replace(false);
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: String,
    up: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        if !*up.borrow() {
            refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        accepted.fetch_add(1, Ordering::SeqCst);
        // Subscribed before spawning: a `down` from now on is seen by this connection.
        let mut switch = up.subscribe();
        let target = target.clone();
        tokio::spawn(async move {
            let mut client = client;
            let Ok(mut upstream) = TcpStream::connect(&target).await else { return };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                // Both sockets are dropped (closed) when this branch wins.
                _ = switch.wait_for(|up| !*up) => {}
            }
        });
    }
}

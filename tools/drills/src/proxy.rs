//! A TCP round-robin in front of several gateways, as a Kubernetes Service spreads
//! connections over the ready pods behind it: each new connection goes to the next
//! backend that accepts it, and backends come and go while it runs (a rollout).

use std::sync::{Arc, Mutex};

use platform::sync::lock;
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// The proxy; stops accepting when dropped.
pub struct RoundRobin {
    port: u16,
    backends: Arc<Mutex<Vec<u16>>>,
    accept: JoinHandle<()>,
}

impl RoundRobin {
    /// Listens on a free loopback port, forwarding to the loopback `backends` ports.
    pub async fn start(backends: &[u16]) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let backends = Arc::new(Mutex::new(backends.to_vec()));
        let accept = tokio::spawn(accept(listener, backends.clone()));
        Ok(Self { port, backends, accept })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// New connections no longer go to `port` (a pod leaving the Service's endpoints);
    /// the open ones stay until either end closes them.
    pub fn remove(&self, port: u16) {
        lock(&self.backends).retain(|p| *p != port);
    }

    /// New connections may go to `port` (a pod that became ready).
    pub fn add(&self, port: u16) {
        lock(&self.backends).push(port);
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept(listener: TcpListener, backends: Arc<Mutex<Vec<u16>>>) {
    let mut next = 0usize;
    while let Ok((mut client, _)) = listener.accept().await {
        let candidates = lock(&backends).clone();
        next = next.wrapping_add(1);
        tokio::spawn(async move {
            // The next backend in turn, or the one after if it refuses (a Service
            // would not route to a pod that is gone, once its endpoints caught up).
            for i in 0..candidates.len() {
                let port = candidates[(next + i) % candidates.len()];
                if let Ok(mut backend) = TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = backend.set_nodelay(true);
                    let _ = client.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                    return;
                }
            }
        });
    }
}

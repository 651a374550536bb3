//! A round-robin TCP proxy on a loopback port: each new connection goes to the
//! next backend, as a load balancer without stickiness sends it. Clients of the
//! proxy open a fresh connection per request, so consecutive requests of one
//! client land on different processes. A backend that refuses the connection
//! (a process that stopped) is skipped for the next one, as a load balancer's
//! health check would; backends can be replaced while it runs (a rolling deploy).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::ApiClient;

pub struct RoundRobinProxy {
    pub api: ApiClient,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    accept: JoinHandle<()>,
}

impl std::ops::Deref for RoundRobinProxy {
    type Target = ApiClient;
    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl RoundRobinProxy {
    pub async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(Mutex::new(backends));
        let shared = backends.clone();
        let accept = tokio::spawn(async move {
            let mut next = 0;
            while let Ok((mut inbound, _)) = listener.accept().await {
                let candidates: Vec<SocketAddr> = {
                    let backends = shared.lock().unwrap();
                    (0..backends.len()).map(|i| backends[(next + i) % backends.len()]).collect()
                };
                next += 1;
                tokio::spawn(async move {
                    for backend in candidates {
                        if let Ok(mut outbound) = TcpStream::connect(backend).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        Self { api: ApiClient { addr, http }, backends, accept }
    }

    /// Sends new connections to `backends` from now on.
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.backends.lock().unwrap() = backends;
    }
}

impl Drop for RoundRobinProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

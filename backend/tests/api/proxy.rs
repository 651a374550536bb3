//! A round-robin TCP proxy on a loopback port: each new connection goes to the
//! next backend, as a load balancer without stickiness sends it. Clients of the
//! proxy open a fresh connection per request, so consecutive requests of one
//! client land on different processes.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::ApiClient;

pub struct RoundRobinProxy {
    pub api: ApiClient,
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
        let accept = tokio::spawn(async move {
            let mut next = 0;
            while let Ok((mut inbound, _)) = listener.accept().await {
                let backend = backends[next % backends.len()];
                next += 1;
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        Self { api: ApiClient { addr, http }, accept }
    }
}

impl Drop for RoundRobinProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

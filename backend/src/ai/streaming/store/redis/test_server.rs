//! A `redis-server` of a test's own on a free loopback port, for tests that stop,
//! pause or restart Redis, give it a password or have it speak only TLS (the
//! machine's shared one must stay as it is). It keeps nothing on disk.

use std::process::Command;
use std::time::Duration;

use tokio::process::Child;

pub struct TestServer {
    pub port: u16,
    args: Vec<String>,
    server: Option<Child>,
}

impl TestServer {
    /// Starts one with `args` added to its command line.
    pub async fn start(args: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { port, args: args.iter().map(|a| a.to_string()).collect(), server: None };
        server.restart().await;
        server
    }

    /// Starts one that speaks only TLS on its port, with a certificate for
    /// 127.0.0.1 that nothing trusts (self-signed, made with `openssl` in `dir`).
    pub async fn start_tls_untrusted(dir: &std::path::Path) -> Self {
        let (cert, key) = (dir.join("redis.crt"), dir.join("redis.key"));
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is installed (make test installs it)");
        assert!(status.success(), "openssl made no certificate");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // The later `--port 0` turns plain TCP off; `--tls-port` takes the port.
        let args = ["--port", "0", "--tls-port", &port.to_string(), "--tls-auth-clients", "no"]
            .iter()
            .map(|a| a.to_string())
            .chain(["--tls-cert-file".into(), cert.display().to_string(), "--tls-key-file".into(), key.display().to_string()])
            .collect();
        let mut server = Self { port, args, server: None };
        server.restart().await;
        server
    }

    /// Kills the server, as a crash would.
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.kill().await.unwrap();
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) it: connections stay open, nothing is answered.
    pub fn pause(&self, paused: bool) {
        let pid = self.server.as_ref().and_then(Child::id).expect("the server runs");
        let signal = if paused { "-STOP" } else { "-CONT" };
        assert!(Command::new("kill").args([signal, &pid.to_string()]).status().unwrap().success());
    }

    /// Starts a fresh, empty server on the same port and waits until it takes connections.
    pub async fn restart(&mut self) {
        self.stop().await;
        let port = self.port.to_string();
        let server = tokio::process::Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (make test installs it)");
        self.server = Some(server);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the test's redis-server did not come up on port {}", self.port);
    }
}

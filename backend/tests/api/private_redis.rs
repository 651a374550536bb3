//! A `redis-server` of the test's own on a free loopback port, for tests that
//! stop and restart Redis (the machine's shared one must stay up). Like the
//! deployment the README warns about, it keeps nothing on disk.

use std::time::Duration;

use tokio::process::{Child, Command};

pub struct PrivateRedis {
    pub port: u16,
    /// For a TLS-only server: its certificates; it answers on `port` with TLS only.
    tls: Option<TestCertificates>,
    server: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A server that speaks only TLS, with a certificate for `localhost` and
    /// `127.0.0.1` from a CA of the test's own (`ca_file`).
    pub async fn start_tls() -> Self {
        Self::start_with(Some(TestCertificates::generate())).await
    }

    async fn start_with(tls: Option<TestCertificates>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Self { port, tls, server: None };
        redis.restart().await;
        redis
    }

    /// The CA a TLS-only server's certificate comes from.
    pub fn ca_file(&self) -> String {
        self.tls.as_ref().expect("a TLS server").path("ca.pem")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server, as a crash or an operator would.
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.kill().await.unwrap();
        }
    }

    /// Starts a fresh, empty server on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        self.stop().await;
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(tls) => command.args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"]).args([
                "--tls-cert-file",
                &tls.path("redis.pem"),
                "--tls-key-file",
                &tls.path("redis.key"),
                "--tls-ca-cert-file",
                &tls.path("ca.pem"),
            ]),
        };
        let server = command
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (make test installs it)");
        self.server = Some(server);
        for _ in 0..100 {
            if self.answers().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the private redis-server did not come up on port {}", self.port);
    }

    /// Whether the server answers: a `PING`, or for TLS (which this process does
    /// not trust) a connection taken.
    async fn answers(&self) -> bool {
        if self.tls.is_some() {
            return tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok();
        }
        let Ok(mut conn) = redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await else { return false };
        redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
    }
}

/// A CA and a server certificate signed by it, made with `openssl` in a
/// temporary directory that lives as long as this.
struct TestCertificates {
    dir: tempfile::TempDir,
}

impl TestCertificates {
    fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl is installed (make test installs it)");
            assert!(status.success(), "openssl {args:?}");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=live-ai test CA",
        ]);
        openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "redis.key", "-out", "redis.csr", "-subj", "/CN=localhost"]);
        std::fs::write(dir.path().join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "redis.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ]);
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}

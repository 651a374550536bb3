//! A `redis-server` of a test's own on a free loopback port, for tests that stop,
//! pause or restart Redis, give it a password or have it speak only TLS (the
//! machine's shared one must stay as it is). Like the deployment the README warns
//! about, it keeps nothing on disk.
//!
//! One file for three crates: the library's unit tests use it as a module, the
//! integration tests include it by path (`tests/api/main.rs`), and so does the
//! benchmarks' load generator for its cluster (`bench/load.rs`), so each may
//! leave part of it unused.

use std::process::Command;
use std::time::Duration;

use tokio::process::Child;

pub struct TestServer {
    pub port: u16,
    args: Vec<String>,
    /// A TLS-only server's certificates, kept for as long as it may restart.
    certificates: Option<TestCertificates>,
    server: Option<Child>,
}

impl TestServer {
    /// Starts one with `args` added to its command line.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_with(args.iter().map(|a| a.to_string()).collect(), None).await
    }

    /// Starts one that speaks only TLS on its port, with the server certificate
    /// of `certificates`.
    pub async fn start_tls(certificates: TestCertificates) -> Self {
        let args = ["--tls-cert-file", &certificates.path("redis.pem"), "--tls-key-file", &certificates.path("redis.key")]
            .map(str::to_owned)
            .to_vec();
        Self::start_with(args, Some(certificates)).await
    }

    async fn start_with(args: Vec<String>, certificates: Option<TestCertificates>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { port, args, certificates, server: None };
        server.restart().await;
        server
    }

    /// Its URL without TLS.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The CA a TLS-only server's certificate comes from.
    pub fn ca_file(&self) -> String {
        self.certificates.as_ref().expect("a TLS server").path("ca.pem")
    }

    /// Kills the server, as a crash or an operator would.
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
        // A TLS-only server takes the port for TLS and turns plain TCP off.
        let listen = match self.certificates {
            None => ["--port", &port].to_vec(),
            Some(_) => ["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"].to_vec(),
        };
        let server = tokio::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(listen)
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

/// The names a test server's certificate is for.
const SERVER_NAMES: &str = "subjectAltName=DNS:localhost,IP:127.0.0.1";

/// A server certificate and its key for `localhost` and 127.0.0.1 (`redis.pem`,
/// `redis.key`), made with `openssl` in a temporary directory that lives as
/// long as this.
pub struct TestCertificates {
    dir: tempfile::TempDir,
}

impl TestCertificates {
    /// Signed by a CA of the test's own (`ca.pem`).
    pub fn from_own_ca() -> Self {
        let certificates = Self { dir: tempfile::tempdir().unwrap() };
        certificates.self_signed("ca", "/CN=live-ai test CA", &[]);
        certificates.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "redis.key",
            "-out",
            "redis.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(certificates.dir.path().join("san.ext"), format!("{SERVER_NAMES}\n")).unwrap();
        certificates.openssl(&[
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
        certificates
    }

    /// Self-signed: nothing trusts it. An end-entity certificate, not a CA's, so
    /// it fails for its issuer alone.
    pub fn untrusted() -> Self {
        let certificates = Self { dir: tempfile::tempdir().unwrap() };
        let extensions = ["-addext", SERVER_NAMES, "-addext", "basicConstraints=critical,CA:FALSE"];
        certificates.self_signed("redis", "/CN=live-ai untrusted test server", &extensions);
        certificates
    }

    /// `<name>.pem` and `<name>.key`: a self-signed certificate for a day.
    fn self_signed(&self, name: &str, subject: &str, extensions: &[&str]) {
        let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
        let mut args =
            vec!["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &cert, "-days", "1", "-subj", subject];
        args.extend_from_slice(extensions);
        self.openssl(&args);
    }

    fn openssl(&self, args: &[&str]) {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is installed (make test installs it)");
        assert!(status.success(), "openssl {args:?}");
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}

/// A Redis Cluster of the tests' own: three primaries and three replicas of
/// Debian's `redis-server` on free loopback ports (each with its cluster bus on
/// another free port, `--cluster-port`), joined by `redis-cli --cluster create`;
/// or three primaries alone (`with_replicas(0)`, the benchmarks').
/// Nodes notice a dead primary within a second (`cluster-node-timeout`), so a
/// failover takes a few. Each node runs under a watchdog shell that stops it
/// once the test process is gone, so a cluster kept in a `static` never
/// outlives its tests.
pub struct TestCluster {
    pub ports: Vec<u16>,
    nodes: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    pub fn start() -> Self {
        Self::with_replicas(1)
    }

    /// Three primaries, each with `replicas` replicas.
    pub fn with_replicas(replicas: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let ports: Vec<u16> = (0..3 * (1 + replicas)).map(|_| free()).collect();
        let watched = std::process::id().to_string();
        let nodes = ports
            .iter()
            .map(|port| {
                let (port, bus) = (port.to_string(), free().to_string());
                let config = dir.path().join(format!("nodes-{port}.conf"));
                Command::new("sh")
                    .args(["-c", "redis-server \"$@\" & node=$!; while kill -0 $WATCHED 2>/dev/null && kill -0 $node 2>/dev/null; do sleep 0.5; done; kill $node 2>/dev/null", "sh"])
                    .args(["--bind", "127.0.0.1", "--port", &port, "--cluster-enabled", "yes", "--cluster-port", &bus])
                    .args(["--cluster-config-file", config.to_str().unwrap(), "--cluster-node-timeout", "1000"])
                    .args(["--save", "", "--appendonly", "no", "--dir", dir.path().to_str().unwrap()])
                    .env("WATCHED", &watched)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("redis-server is installed (make test installs it)")
            })
            .collect();
        for port in &ports {
            Self::wait_for(*port, "PING", "PONG");
        }
        let addresses: Vec<String> = ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli is installed (make test installs it)");
        assert!(created.success(), "redis-cli --cluster create");
        let cluster = Self { ports, nodes, _dir: dir };
        for port in &cluster.ports {
            Self::wait_for(*port, "CLUSTER INFO", "cluster_state:ok");
        }
        for port in cluster.replicas() {
            Self::wait_for(port, "INFO replication", "master_link_status:up");
        }
        cluster
    }

    /// `REDIS_CLUSTER_URLS` for it: two of its nodes, as seeds.
    pub fn urls(&self) -> String {
        format!("redis://127.0.0.1:{},redis://127.0.0.1:{}", self.ports[0], self.ports[1])
    }

    /// What `redis-cli` says to `command` on the node at `port`.
    pub fn ask(port: u16, command: &str) -> String {
        let output = Command::new("redis-cli").args(["-p", &port.to_string()]).args(command.split(' ')).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn wait_for(port: u16, command: &str, answer: &str) {
        for _ in 0..200 {
            if Self::ask(port, command).contains(answer) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node {port} never answered {command} with {answer}");
    }

    /// The ports of the nodes that are replicas now.
    pub fn replicas(&self) -> Vec<u16> {
        self.ports.iter().copied().filter(|port| Self::ask(*port, "ROLE").starts_with("slave")).collect()
    }

    /// The port of the primary serving `key`'s slot now.
    pub fn primary_of(&self, key: &str) -> u16 {
        let slot: u16 = Self::ask(self.ports[0], &format!("CLUSTER KEYSLOT {key}")).trim().parse().unwrap();
        let shards = Self::ask(self.ports[0], "CLUSTER SLOTS");
        // `redis-cli` prints CLUSTER SLOTS flat: start, end, then the primary's ip, port, id, …
        let lines: Vec<&str> = shards.lines().map(str::trim).collect();
        for (at, line) in lines.iter().enumerate() {
            let (Ok(start), Some(end)) = (line.parse::<u16>(), lines.get(at + 1).and_then(|l| l.parse::<u16>().ok())) else { continue };
            if lines.get(at + 2) == Some(&"127.0.0.1") && (start..=end).contains(&slot) {
                return lines[at + 3].parse().unwrap();
            }
        }
        panic!("no primary for slot {slot}: {shards}");
    }

    /// Kills the node at `port`, as a crash would.
    pub fn kill(&mut self, port: u16) {
        let at = self.ports.iter().position(|p| *p == port).unwrap();
        let _ = Command::new("sh").args(["-c", &format!("kill -9 $(pgrep -P {} redis-server)", self.nodes[at].id())]).status();
        let _ = self.nodes[at].wait();
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = Command::new("sh").args(["-c", &format!("kill $(pgrep -P {} redis-server) 2>/dev/null", node.id())]).status();
            let _ = node.wait();
        }
    }
}

//! The append connection's own wire: a socket to Redis (TCP, TLS or Unix) that
//! `appends.rs` writes whole pipelines of RESP commands to and reads their
//! replies from itself. Every event passes here once, so the per-command costs
//! of a general client matter: through redis-rs each `XADD` was a command
//! object, a hand-off to its connection task and back, and a parsed, allocated
//! reply value, 28 % of a generating process's CPU (bench/RESULTS.md). Here a
//! pipeline is one buffer and one write, and a reply is judged in place in the
//! read buffer.
//!
//! RESP2 only: the connection never sends `HELLO`, so Redis answers in RESP2
//! whatever the URL asks for.

use std::io;
use std::sync::{Arc, OnceLock};

use bytes::{Buf, BufMut, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use crate::redis_connection::COMMAND_TIMEOUT;

/// Arrays nested deeper than this in a reply are taken for garbage.
const MAX_DEPTH: usize = 8;

/// Appends one command, `args` as bulk strings, to `out`.
pub fn command(out: &mut BytesMut, args: &[&[u8]]) {
    command_head(out, args.len(), args);
}

/// Appends the start of a command of `len` arguments: its first ones, `args`.
/// The rest must follow, each as `bulk` writes it.
pub fn command_head(out: &mut BytesMut, len: usize, args: &[&[u8]]) {
    let size: usize = args.iter().map(|a| a.len() + 16).sum();
    out.reserve(size + 16);
    header(out, b'*', len);
    for arg in args {
        bulk(out, arg);
    }
}

/// Appends `arg` as a bulk string.
pub fn bulk(out: &mut BytesMut, arg: &[u8]) {
    header(out, b'$', arg.len());
    out.put_slice(arg);
    out.put_slice(b"\r\n");
}

fn header(out: &mut BytesMut, kind: u8, n: usize) {
    out.put_u8(kind);
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
    out.put_slice(b"\r\n");
}

/// A reply, as much as a pipeline's sender needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Any value: a string, an integer or an array.
    Value,
    /// A null bulk string or array.
    Nil,
    /// An error reply, its text.
    Error(String),
}

/// The bytes were not RESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed;

/// Takes the first whole reply off `buf`, or leaves `buf` as it was and returns
/// `None` until all of it has arrived.
pub fn take_reply(buf: &mut BytesMut) -> Result<Option<Reply>, Malformed> {
    match scan(buf, 0, 0)? {
        Some((reply, len)) => {
            buf.advance(len);
            Ok(Some(reply))
        }
        None => Ok(None),
    }
}

/// The reply starting at `at` and its length, if whole.
fn scan(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, Malformed> {
    let Some((kind, line, next)) = line_at(buf, at)? else { return Ok(None) };
    match kind {
        b'+' | b':' => Ok(Some((Reply::Value, next - at))),
        b'-' => Ok(Some((Reply::Error(String::from_utf8_lossy(line).into_owned()), next - at))),
        b'$' => match length(line)? {
            None => Ok(Some((Reply::Nil, next - at))),
            Some(n) => {
                let end = next.checked_add(n).and_then(|end| end.checked_add(2)).ok_or(Malformed)?;
                match buf.get(end - 2..end) {
                    None => return Ok(None),
                    Some(b"\r\n") => {}
                    Some(_) => return Err(Malformed),
                }
                Ok(Some((Reply::Value, end - at)))
            }
        },
        b'*' => match length(line)? {
            None => Ok(Some((Reply::Nil, next - at))),
            Some(_) if depth >= MAX_DEPTH => Err(Malformed),
            Some(n) => {
                let mut end = next;
                for _ in 0..n {
                    let Some((_, len)) = scan(buf, end, depth + 1)? else { return Ok(None) };
                    end = end.checked_add(len).ok_or(Malformed)?;
                }
                Ok(Some((Reply::Value, end - at)))
            }
        },
        _ => Err(Malformed),
    }
}

/// A line's type byte, the rest of it, and where the next line starts.
type Line<'a> = (u8, &'a [u8], usize);

/// The type byte, the rest of the line, and where the next line starts; `None`
/// until the line is whole. A line with no type byte (`\r\n` alone) is
/// `Malformed`: every slice is taken with `get`, so no input can panic here.
fn line_at(buf: &[u8], at: usize) -> Result<Option<Line<'_>>, Malformed> {
    let Some(rest) = buf.get(at..) else { return Ok(None) };
    let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
    let (Some(&kind), Some(line)) = (rest.first(), rest.get(1..end)) else { return Err(Malformed) };
    Ok(Some((kind, line, at + end + 2)))
}

/// A length line's value; `None` for `-1` (nil).
fn length(line: &[u8]) -> Result<Option<usize>, Malformed> {
    if line == b"-1" {
        return Ok(None);
    }
    let text = std::str::from_utf8(line).map_err(|_| Malformed)?;
    text.parse().map(Some).map_err(|_| Malformed)
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// An open connection, its halves apart so replies can be read while a pipeline
/// waits to be written.
pub struct Link {
    pub reader: Reader,
    pub writer: Writer,
}

impl Link {
    /// Connects to the server of `info` and signs in (`AUTH`, `SELECT`), all
    /// within the command timeout.
    pub async fn connect(info: &ConnectionInfo) -> io::Result<Self> {
        match tokio::time::timeout(COMMAND_TIMEOUT, Self::open(info)).await {
            Ok(link) => link,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "Redis did not answer the connection in time")),
        }
    }

    async fn open(info: &ConnectionInfo) -> io::Result<Self> {
        let mut link = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let socket = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                socket.set_nodelay(true)?;
                let (reader, writer) = socket.into_split();
                Self { reader: Box::new(reader), writer: Box::new(writer) }
            }
            ConnectionAddr::Unix(path) => {
                let (reader, writer) = tokio::net::UnixStream::connect(path).await?.into_split();
                Self { reader: Box::new(reader), writer: Box::new(writer) }
            }
            ConnectionAddr::TcpTls { host, port, insecure, .. } => {
                if *insecure {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "rediss:// without certificate checks (#insecure) is not supported",
                    ));
                }
                let socket = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                socket.set_nodelay(true)?;
                let name = ServerName::try_from(host.clone()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let tls = TlsConnector::from(tls_config()?).connect(name, socket).await?;
                let (reader, writer) = tokio::io::split(tls);
                Self { reader: Box::new(reader), writer: Box::new(writer) }
            }
            other => return Err(io::Error::new(io::ErrorKind::Unsupported, format!("cannot reach Redis at {other}"))),
        };
        let settings = info.redis_settings();
        let mut hello = BytesMut::new();
        let mut expected = 0;
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => command(&mut hello, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => command(&mut hello, &[b"AUTH", password.as_bytes()]),
            }
            expected += 1;
        }
        if settings.db() != 0 {
            command(&mut hello, &[b"SELECT", settings.db().to_string().as_bytes()]);
            expected += 1;
        }
        if expected > 0 {
            link.send(&hello).await?;
            let mut replies = BytesMut::new();
            for _ in 0..expected {
                if let Reply::Error(error) = link.read_reply(&mut replies).await? {
                    return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("Redis refused the connection: {error}")));
                }
            }
        }
        Ok(link)
    }

    /// Writes `bytes` out whole: flushed too, since TLS may hold what it took.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await
    }

    async fn read_reply(&mut self, buf: &mut BytesMut) -> io::Result<Reply> {
        loop {
            if let Some(reply) = take_reply(buf).map_err(|_| not_resp())? {
                return Ok(reply);
            }
            if self.reader.read_buf(buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// What `rediss://` connections trust: the system's roots, or those of the file
/// `SSL_CERT_FILE` names (as redis-rs's own connections do).
fn tls_config() -> io::Result<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if let Some(error) = found.errors.first() {
            return Err(format!("cannot load the certificates to trust Redis with: {error}"));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(found.certs);
        Ok(Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()))
    });
    config.clone().map_err(io::Error::other)
}

pub fn not_resp() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "Redis sent something that is not RESP")
}

#[cfg(test)]
mod tests {
    use super::super::test_server::{TestCertificates, TestServer};
    use super::*;

    #[test]
    fn commands_are_packed_as_redis_rs_packs_them() {
        let mut ours = BytesMut::new();
        command(&mut ours, &[b"XADD", b"log", b"NOMKSTREAM", b"7-1", b"t", b"chunk", b"j", "{\"token\":\"é\r\n\"}".as_bytes()]);
        command(&mut ours, &[b"PUBLISH", b"ch", b""]);
        let mut theirs = redis::cmd("XADD")
            .arg("log")
            .arg("NOMKSTREAM")
            .arg("7-1")
            .arg("t")
            .arg("chunk")
            .arg("j")
            .arg("{\"token\":\"é\r\n\"}")
            .get_packed_command();
        theirs.extend(redis::cmd("PUBLISH").arg("ch").arg("").get_packed_command());
        assert_eq!(&ours[..], &theirs[..]);
    }

    const REPLIES: &[(&[u8], Reply)] = &[
        (b"$8\r\n7-1\r\nabc\r\n", Reply::Value),
        (b"+OK\r\n", Reply::Value),
        (b":2\r\n", Reply::Value),
        (b"$-1\r\n", Reply::Nil),
        (b"*-1\r\n", Reply::Nil),
        (b"*2\r\n*1\r\n$1\r\nx\r\n:5\r\n", Reply::Value),
        (b"$0\r\n\r\n", Reply::Value),
    ];

    #[test]
    fn each_reply_is_taken_whole_and_only_once_it_has_all_arrived() {
        let error = b"-ERR The ID specified in XADD is equal or smaller than the target stream top item\r\n";
        let mut all: Vec<u8> = REPLIES.iter().flat_map(|(bytes, _)| bytes.to_vec()).collect();
        all.extend_from_slice(error);
        let mut expected: Vec<Reply> = REPLIES.iter().map(|(_, reply)| reply.clone()).collect();
        expected.push(Reply::Error("ERR The ID specified in XADD is equal or smaller than the target stream top item".into()));
        // Every split of the stream of replies into two reads gives the same replies.
        for cut in 0..=all.len() {
            let (mut buf, mut got) = (BytesMut::from(&all[..cut]), Vec::new());
            while let Some(reply) = take_reply(&mut buf).unwrap() {
                got.push(reply);
            }
            buf.extend_from_slice(&all[cut..]);
            while let Some(reply) = take_reply(&mut buf).unwrap() {
                got.push(reply);
            }
            assert_eq!(got, expected, "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn what_is_not_resp_is_refused() {
        for garbage in
            [&b"?what\r\n"[..], b"$x\r\n", b"$2\r\nabcd\r\n", b"*-2\r\n", b"*99999999999999999999999\r\n", b"$18446744073709551615\r\n"]
        {
            assert_eq!(take_reply(&mut BytesMut::from(garbage)), Err(Malformed), "{:?}", String::from_utf8_lossy(garbage));
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1) + ":1\r\n";
        assert_eq!(take_reply(&mut BytesMut::from(deep.as_bytes())), Err(Malformed));
    }

    #[test]
    fn a_line_with_no_type_byte_is_refused_not_a_panic() {
        // `line_at` once sliced `[1..0]` here.
        assert_eq!(take_reply(&mut BytesMut::from(&b"\r\n"[..])), Err(Malformed));
        assert_eq!(take_reply(&mut BytesMut::from(&b"*1\r\n\r\n"[..])), Err(Malformed));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        /// Any bytes at all: a reply, a need for more, or `Malformed`, never a
        /// panic; and a reply taken consumes what it was made of, no more.
        #[test]
        fn any_bytes_give_a_reply_more_to_wait_for_or_malformed(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = take_reply(&mut buf) {}
            proptest::prop_assert!(buf.len() <= bytes.len());
        }

        /// Bytes built from RESP's own pieces, which reach the deeper branches
        /// that uniformly random bytes rarely do.
        #[test]
        fn resp_like_bytes_never_panic(pieces in proptest::collection::vec(proptest::sample::select(vec![
            &b"*"[..], b"$", b"+", b"-", b":", b"\r\n", b"\r", b"\n", b"-1", b"0", b"1", b"2", b"3", b"99", b"OK", b"x",
        ]), 0..40)) {
            let bytes: Vec<u8> = pieces.concat();
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = take_reply(&mut buf) {}
        }
    }

    /// Sends `args` on `link` and returns the reply.
    async fn ask(link: &mut Link, args: &[&[u8]]) -> Reply {
        let mut out = BytesMut::new();
        command(&mut out, args);
        link.send(&out).await.unwrap();
        link.read_reply(&mut BytesMut::new()).await.unwrap()
    }

    #[tokio::test]
    async fn a_link_signs_in_with_the_urls_user_password_and_database() {
        let redis = TestServer::start(&["--requirepass", "s3cret"]).await;
        // Written through the link, read back by redis-rs on the same URL: in the same database.
        for url in [format!("redis://:s3cret@127.0.0.1:{}/5", redis.port), format!("redis://default:s3cret@127.0.0.1:{}", redis.port)] {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut link = Link::connect(client.get_connection_info()).await.unwrap();
            assert_eq!(ask(&mut link, &[b"SET", b"k", url.as_bytes()]).await, Reply::Value);
            let mut check = client.get_multiplexed_async_connection().await.unwrap();
            let value: String = redis::cmd("GET").arg("k").query_async(&mut check).await.unwrap();
            assert_eq!(value, url);
        }
        let wrong = redis::Client::open(format!("redis://:nope@127.0.0.1:{}", redis.port)).unwrap();
        let refused = Link::connect(wrong.get_connection_info()).await.err().expect("a wrong password is refused");
        assert!(refused.to_string().contains("Redis refused the connection"), "{refused}");
        let anonymous = redis::Client::open(redis.url()).unwrap();
        let mut link = Link::connect(anonymous.get_connection_info()).await.unwrap();
        assert!(matches!(ask(&mut link, &[b"GET", b"k"]).await, Reply::Error(e) if e.starts_with("NOAUTH")));
    }

    #[tokio::test]
    async fn a_tls_link_refuses_a_redis_whose_certificate_it_does_not_trust() {
        let redis = TestServer::start_tls(TestCertificates::untrusted()).await;
        let client = redis::Client::open(format!("rediss://127.0.0.1:{}", redis.port)).unwrap();
        let refused = Link::connect(client.get_connection_info()).await.err().expect("an untrusted certificate is refused");
        assert!(refused.to_string().contains("invalid peer certificate: UnknownIssuer"), "{refused}");
    }

    #[tokio::test]
    async fn a_link_reaches_redis_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        let _redis = TestServer::start(&["--unixsocket", socket.to_str().unwrap()]).await;
        let client = redis::Client::open(format!("unix://{}", socket.display())).unwrap();
        let mut link = Link::connect(client.get_connection_info()).await.unwrap();
        assert_eq!(ask(&mut link, &[b"SET", b"k", b"over the socket"]).await, Reply::Value);
        let mut check = client.get_multiplexed_async_connection().await.unwrap();
        let value: String = redis::cmd("GET").arg("k").query_async(&mut check).await.unwrap();
        assert_eq!(value, "over the socket");
    }
}

//! A minimal HTTP/1.1 client for reading SSE responses on loopback: one request at a
//! time per connection, keep-alive, chunked or sized bodies, 64 KiB reads, and the
//! decoded body handed over in place. A general client (reqwest) spends several
//! times more CPU per small event than this; on two shared cores that CPU comes out
//! of the server's share, and the unpaced measurement would measure the client.

use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Connection {
    stream: TcpStream,
    host: String,
    buffer: Vec<u8>,
    /// Bytes of `buffer` not consumed yet, from `start` to `end`.
    start: usize,
    end: usize,
    /// When the last read returned: the arrival time of what it read.
    read_at: Instant,
}

/// How a body was framed.
enum Framing {
    Chunked,
    Length(usize),
}

pub struct Response {
    pub status: u16,
    framing: Framing,
}

/// The `host:port` of a `http://host:port` base URL.
pub fn address(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").trim_end_matches('/').parse().unwrap_or_else(|_| panic!("not an http://ip:port base: {base}"))
}

impl Connection {
    pub async fn connect(address: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, host: address.to_string(), buffer: vec![0; 64 * 1024], start: 0, end: 0, read_at: Instant::now() })
    }

    /// Reads more bytes; an error at the end of the stream.
    async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buffer.len() {
            self.buffer.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.end == self.buffer.len() {
                self.buffer.resize(self.buffer.len() * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.buffer[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        self.end += n;
        self.read_at = Instant::now();
        Ok(())
    }

    fn pending(&self) -> &[u8] {
        &self.buffer[self.start..self.end]
    }

    /// Sends `GET path` and reads the response head.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n", self.host);
        for (name, value) in headers {
            request += &format!("{name}: {value}\r\n");
        }
        request += "\r\n";
        self.stream.write_all(request.as_bytes()).await?;
        self.read_head().await
    }

    async fn read_head(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(at) = self.pending().windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.pending()[..head_end]).to_ascii_lowercase();
        self.start += head_end + 4;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "a malformed response head");
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim));
        let framing = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            Framing::Chunked
        } else {
            Framing::Length(header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0))
        };
        Ok(Response { status, framing })
    }

    /// Sends `POST path` with a JSON body; returns the status and the whole body.
    pub async fn post_json(&mut self, path: &str, json: &str) -> io::Result<(u16, Vec<u8>)> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
            self.host,
            json.len()
        );
        self.stream.write_all(request.as_bytes()).await?;
        let response = self.read_head().await?;
        let mut body = Vec::new();
        self.read_body(&response, |bytes, _| {
            body.extend_from_slice(bytes);
            ControlFlow::Continue(())
        })
        .await?;
        Ok((response.status, body))
    }

    /// Reads the body of `response`, handing each decoded piece to `on_bytes` with
    /// the time its bytes were read from the socket. `Break` stops early (the connection then cannot be
    /// reused). Returns whether the body was read to its end.
    pub async fn read_body(
        &mut self,
        response: &Response,
        mut on_bytes: impl FnMut(&[u8], Instant) -> ControlFlow<()>,
    ) -> io::Result<bool> {
        match response.framing {
            Framing::Length(mut left) => {
                while left > 0 {
                    if self.start == self.end {
                        self.fill().await?;
                    }
                    let take = left.min(self.end - self.start);
                    let piece = self.start..self.start + take;
                    self.start += take;
                    left -= take;
                    if on_bytes(&self.buffer[piece], self.read_at).is_break() {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Framing::Chunked => loop {
                // The size line: hex digits, maybe `;extensions`, CRLF.
                let line_end = loop {
                    if let Some(at) = self.pending().windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    self.fill().await?;
                };
                let line = &self.pending()[..line_end];
                let digits = line.split(|&b| b == b';').next().unwrap_or_default();
                let size = usize::from_str_radix(std::str::from_utf8(digits).unwrap_or("x").trim(), 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a malformed chunk size"))?;
                self.start += line_end + 2;
                if size == 0 {
                    // No trailers from these servers: just the final CRLF.
                    while self.end - self.start < 2 {
                        self.fill().await?;
                    }
                    self.start += 2;
                    return Ok(true);
                }
                let mut left = size;
                while left > 0 {
                    if self.start == self.end {
                        self.fill().await?;
                    }
                    let take = left.min(self.end - self.start);
                    let piece = self.start..self.start + take;
                    self.start += take;
                    left -= take;
                    if on_bytes(&self.buffer[piece], self.read_at).is_break() {
                        return Ok(false);
                    }
                }
                while self.end - self.start < 2 {
                    self.fill().await?;
                }
                self.start += 2;
            },
        }
    }
}

//! A loopback HTTP proxy that can lose replies: the request reaches the server and is carried
//! out, but the client never hears back (its connection closes without an answer), so the
//! client retries a request that already landed.
//!
//! It sits in front of the S3 test server: point the client's endpoint at
//! [`LostReplyProxy::endpoint`]. Every request is forwarded on its own upstream connection
//! (`Connection: close` both ways, so each client connection carries one request and one
//! answer). When armed with [`LostReplyProxy::lose_reply_to_conditional_put`], the Nth
//! following conditional PUT (one carrying `If-None-Match` or `If-Match`) is forwarded, its
//! answer read to the end, and then the client connection is closed without a byte of it.
//!
//! ```no_run
//! use keepsake_testkit::proxy::LostReplyProxy;
//!
//! let proxy = LostReplyProxy::start("http://127.0.0.1:9000")?;
//! proxy.lose_reply_to_conditional_put(1);
//! // ... a client using `proxy.endpoint()` makes a create-only PUT: the object is written, the
//! // client sees its connection closed and retries ...
//! assert_eq!(proxy.lost_replies(), 1);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Requests must carry their body with `Content-Length` (object_store's do); a chunked request
//! is answered with `501`. Only plain `http://` upstreams are supported.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long one upstream exchange may take before the proxy gives up on it.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// The proxy; it stops when dropped.
#[derive(Debug)]
pub struct LostReplyProxy {
    address: SocketAddr,
    endpoint: String,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct State {
    stop: AtomicBool,
    /// Conditional PUTs seen so far.
    conditional_puts: AtomicU64,
    /// The count of conditional PUTs at which to lose the reply.
    lose_at: Mutex<Option<u64>>,
    lost: AtomicU64,
}

impl LostReplyProxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (`http://host:port`).
    ///
    /// # Errors
    /// If `upstream` is not a plain `http://host:port` URL or no port can be bound.
    pub fn start(upstream: &str) -> io::Result<Self> {
        let upstream = upstream
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/').to_owned())
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("not a plain http://host:port endpoint: {upstream}"),
                )
            })?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let state = Arc::new(State::default());
        let acceptor = {
            let state = Arc::clone(&state);
            thread::Builder::new()
                .name("lost-reply-proxy".into())
                .spawn(move || accept_loop(&listener, &upstream, &state))?
        };
        Ok(Self {
            address,
            endpoint: format!("http://{address}"),
            state,
            acceptor: Some(acceptor),
        })
    }

    /// The URL clients should use instead of the upstream's.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Arms the proxy: the `n`th conditional PUT from now on (1 = the next one) is carried out
    /// upstream, but its reply is lost. Replaces an earlier arming.
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn lose_reply_to_conditional_put(&self, n: u64) {
        assert!(n > 0, "the first conditional PUT from now on is n = 1");
        let seen = self.state.conditional_puts.load(Ordering::SeqCst);
        *self.state.lose_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(seen + n);
    }

    /// Replies lost so far.
    pub fn lost_replies(&self) -> u64 {
        self.state.lost.load(Ordering::SeqCst)
    }

    /// Conditional PUTs (with `If-None-Match` or `If-Match`) forwarded so far, retries included.
    pub fn conditional_puts(&self) -> u64 {
        self.state.conditional_puts.load(Ordering::SeqCst)
    }
}

impl Drop for LostReplyProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect(self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: &str, state: &Arc<State>) {
    for client in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = client else { continue };
        let (upstream, state) = (upstream.to_owned(), Arc::clone(state));
        // One thread per connection; a failed exchange only closes its connection.
        let _ = thread::Builder::new()
            .name("lost-reply-proxy-conn".into())
            .spawn(move || {
                let _ = serve(client, &upstream, &state);
            });
    }
}

/// A message head: the start line and the header lines (without their line ends).
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn read(reader: &mut impl BufRead) -> io::Result<Option<Self>> {
        let mut start = String::new();
        if reader.read_line(&mut start)? == 0 {
            return Ok(None);
        }
        let mut headers = Vec::new();
        let mut size = start.len();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line)?;
            size += n;
            if n == 0 || size > MAX_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "incomplete or oversized head",
                ));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "header line without a colon")
            })?;
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        Ok(Some(Self {
            start: start.trim_end_matches(['\r', '\n']).to_owned(),
            headers,
        }))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The head as bytes, with `Connection: close` instead of any connection header.
    fn to_bytes_closing(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (name, value) in &self.headers {
            if !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("keep-alive")
            {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }
}

fn serve(client: TcpStream, upstream: &str, state: &State) -> io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let Some(request) = Head::read(&mut reader)? else {
        return Ok(());
    };
    if request
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        client.write_all(
            b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return client.shutdown(Shutdown::Both);
    }
    let length: u64 = request
        .header("content-length")
        .map(|v| v.parse())
        .transpose()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?
        .unwrap_or(0);
    let conditional_put = request.start.starts_with("PUT ")
        && (request.header("if-none-match").is_some() || request.header("if-match").is_some());
    let lose = conditional_put && {
        let n = state.conditional_puts.fetch_add(1, Ordering::SeqCst) + 1;
        let mut lose_at = state.lose_at.lock().unwrap_or_else(|e| e.into_inner());
        if *lose_at == Some(n) {
            *lose_at = None;
            true
        } else {
            false
        }
    };

    let mut server = TcpStream::connect(upstream)?;
    server.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
    server.write_all(&request.to_bytes_closing())?;
    io::copy(&mut (&mut reader).take(length), &mut server)?;
    server.flush()?;

    // The upstream closes after its answer (`Connection: close`): read it to the end, so the
    // request has certainly been carried out before a reply is lost.
    let mut answer = BufReader::new(server);
    let response = Head::read(&mut answer)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "upstream closed without answer",
        )
    })?;
    let mut body = Vec::new();
    answer.read_to_end(&mut body)?;

    if lose {
        state.lost.fetch_add(1, Ordering::SeqCst);
        // Closed without a byte of the answer: the client cannot tell whether the request
        // landed.
        return client.shutdown(Shutdown::Both);
    }
    client.write_all(&response.to_bytes_closing())?;
    client.write_all(&body)?;
    client.flush()?;
    client.shutdown(Shutdown::Both)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server that answers every request with its method and body.
    fn echo_server() -> (String, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let handle = thread::spawn(move || {
            for stream in listener.incoming().take(3) {
                let stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let head = Head::read(&mut reader).unwrap().unwrap();
                assert_eq!(head.header("connection"), Some("close"));
                let length: usize = head
                    .header("content-length")
                    .unwrap_or("0")
                    .parse()
                    .unwrap();
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                let answer = format!("{} {}", head.start, String::from_utf8(body).unwrap());
                let mut stream = stream;
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{answer}",
                    answer.len()
                )
                .unwrap();
            }
        });
        (endpoint, handle)
    }

    fn exchange(endpoint: &str, request: &str) -> String {
        let mut stream = TcpStream::connect(endpoint.strip_prefix("http://").unwrap()).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn forwards_and_loses_the_armed_reply_only() {
        let (upstream, server) = echo_server();
        let proxy = LostReplyProxy::start(&upstream).unwrap();
        let put =
            "PUT /b/k HTTP/1.1\r\nHost: x\r\nIf-None-Match: *\r\nContent-Length: 3\r\n\r\nabc";
        let get = "GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n";

        let answer = exchange(proxy.endpoint(), get);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        assert!(!answer.contains("keep-alive"), "{answer}");
        assert!(answer.ends_with("GET /b/k HTTP/1.1 "), "{answer}");

        proxy.lose_reply_to_conditional_put(1);
        assert_eq!(exchange(proxy.endpoint(), put), "", "the reply is lost");
        assert_eq!(proxy.lost_replies(), 1);
        let answer = exchange(proxy.endpoint(), put);
        assert!(
            answer.ends_with("PUT /b/k HTTP/1.1 abc"),
            "armed once: {answer}"
        );
        assert_eq!(proxy.conditional_puts(), 2);
        server.join().unwrap();
    }

    #[test]
    fn refuses_endpoints_it_cannot_reach() {
        for bad in ["https://h:1", "h:1", "http://", "http://h:1/path"] {
            assert!(LostReplyProxy::start(bad).is_err(), "{bad}");
        }
    }
}

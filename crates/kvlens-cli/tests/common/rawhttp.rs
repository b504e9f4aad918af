//! Just enough HTTP/1.1 for the test servers that misbehave on purpose (`kvlens serve`
//! itself runs on axum): one request per connection, bodies sized by `Content-Length`, responses closed
//! by the server (`Connection: close`), so that a streamed body needs no chunked encoding.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Requests larger than this are refused (a 128k-token prompt is about 600 KB of text).
pub const MAX_BODY: usize = 32 << 20;
const MAX_HEAD: usize = 64 << 10;

#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be read, with the status to answer (0: answer nothing).
#[derive(Debug)]
pub struct BadRequest {
    pub status: u16,
    pub msg: String,
}

fn bad(status: u16, msg: impl Into<String>) -> BadRequest {
    BadRequest {
        status,
        msg: msg.into(),
    }
}

/// Reads one request from `stream`; a client that sends nothing for `idle` is dropped.
pub fn read_request(stream: &mut TcpStream, idle: Duration) -> Result<Request, BadRequest> {
    stream
        .set_read_timeout(Some(idle))
        .map_err(|e| bad(0, e.to_string()))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| bad(0, e.to_string()))?);
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = reader
            .by_ref()
            .take((MAX_HEAD - head.len()) as u64 + 1)
            .read_until(b'\n', &mut head)
            .map_err(|e| bad(0, e.to_string()))?;
        if n == 0 {
            return Err(bad(0, "connection closed before the request was complete"));
        }
        if head.len() > MAX_HEAD {
            return Err(bad(431, "request headers are too large"));
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let text = String::from_utf8(head).map_err(|_| bad(400, "request head is not UTF-8"))?;
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(bad(400, format!("malformed request line `{first}`")));
    };
    let path = target.split('?').next().unwrap_or(target).to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut req = Request {
        method: method.to_string(),
        path,
        headers,
        body: Vec::new(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        return Err(bad(
            411,
            "chunked request bodies are not supported; send Content-Length",
        ));
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| bad(400, format!("Content-Length `{v}` is not a number")))?,
    };
    if len > MAX_BODY {
        return Err(bad(413, format!("the body exceeds {MAX_BODY} bytes")));
    }
    if len > 0
        && req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    req.body = vec![0; len];
    reader
        .read_exact(&mut req.body)
        .map_err(|e| bad(400, format!("reading the body: {e}")))?;
    Ok(req)
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes a whole response and closes the connection.
pub fn respond(stream: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body))
        .and_then(|_| stream.flush());
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// An OpenAI-style error body.
pub fn respond_error(stream: &mut TcpStream, status: u16, msg: &str) {
    let kind = if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let body = serde_json::json!({"error": {"message": msg, "type": kind, "code": status}});
    respond(
        stream,
        status,
        "application/json",
        body.to_string().as_bytes(),
    );
}

/// Starts a server-sent-events response; the body ends when the connection closes.
pub fn start_events(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
          Connection: close\r\n\r\n",
    )?;
    stream.flush()
}

/// One `data:` event.
pub fn send_event(stream: &mut TcpStream, data: &str) -> std::io::Result<()> {
    stream.write_all(format!("data: {data}\n\n").as_bytes())?;
    stream.flush()
}

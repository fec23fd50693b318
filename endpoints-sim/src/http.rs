//! A minimal HTTP/1.1 JSON client (one request per connection), enough for Janus's REST
//! API on loopback without pulling in a full HTTP stack.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::SimError;

pub async fn request_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, SimError> {
    let body = request(addr, method, path, body).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// The body of a 200 response; any other status is an error.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Vec<u8>, SimError> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let (status, chunked, body) = split_response(&raw)?;
    if status != 200 {
        return Err(SimError::Http(format!(
            "{method} {path}: status {status}: {}",
            String::from_utf8_lossy(body)
        )));
    }
    if chunked {
        dechunk(body)
    } else {
        Ok(body.to_vec())
    }
}

fn split_response(raw: &[u8]) -> Result<(u16, bool, &[u8]), SimError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| SimError::Http("no end of headers".into()))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| SimError::Http("bad status line".into()))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok((status, chunked, &raw[end + 4..]))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, SimError> {
    let bad = || SimError::Http("bad chunked body".into());
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or_else(bad)?);
        b = b.get(size + 2..).ok_or_else(bad)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let (s, c, b) = split_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, c, b), (200, false, &b"{}"[..]));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n4\r\na\":1\r\n1\r\n}\r\n0\r\n\r\n";
        let (s, c, b) = split_response(raw).unwrap();
        assert_eq!((s, c), (200, true));
        assert_eq!(dechunk(b).unwrap(), b"{\"a\":1}");
        assert!(split_response(b"garbage").is_err());
        assert!(dechunk(b"zz\r\n").is_err());
    }
}

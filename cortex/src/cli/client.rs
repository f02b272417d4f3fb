//! A minimal HTTP/1.1 client for the running cortex's API (loopback by default), used by the
//! tools that act through the service rather than on its files (`cortex actions`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};
use cortex::api::read_secret;
use cortex::config::CortexConfig;
use serde_json::Value;
use zeroize::Zeroizing;

/// How long a request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response read.
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// The API of the cortex the config describes, with its bearer token.
pub struct ApiClient {
    addr: SocketAddr,
    token: Zeroizing<String>,
}

impl ApiClient {
    pub fn from_config(config: &CortexConfig) -> anyhow::Result<Self> {
        let mut addr = config.api_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let token = read_secret(&config.api.token_file)
            .with_context(|| format!("[api] token_file {}", config.api.token_file.display()))?;
        Ok(ApiClient { addr, token })
    }

    /// `GET path` (path includes the query string); the JSON body of a 2xx answer.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.request("GET", path, None)
    }

    /// `POST path` with a JSON body; the status and JSON body of the answer.
    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.request("POST", path, Some(body))
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect_timeout(&self.addr, TIMEOUT).with_context(|| {
            format!(
                "connecting to the cortex API at {} (is `cortex serve` running?)",
                self.addr
            )
        })?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            self.addr,
            self.token.as_str(),
            body.len()
        );
        let request = Zeroizing::new(head + &body);
        stream
            .write_all(request.as_bytes())
            .context("sending the request to the cortex API")?;
        let mut raw = Vec::new();
        stream
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut raw)
            .context("reading the cortex API's answer")?;
        parse_response(&raw)
    }
}

/// Status and JSON body of a `Connection: close` HTTP/1.1 response.
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Value)> {
    let text = std::str::from_utf8(raw).context("the API's answer is not UTF-8")?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("the API's answer has no header end");
    };
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the API's answer has no status code")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    let value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body)
            .with_context(|| format!("the API answered {status} with non-JSON"))?
    };
    Ok((status, value))
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size_line, rest) = body.split_once("\r\n").context("truncated chunked body")?;
        let size = usize::from_str_radix(size_line.trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).context("truncated chunk")?;
        out.push_str(chunk);
        body = rest.get(size + 2..).context("truncated chunk end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{\"a\": 1}\n";
        let (status, body) = parse_response(plain).unwrap();
        assert_eq!((status, body["a"].as_i64()), (200, Some(1)));
        let chunked = b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"e\":\r\n3\r\n 2}\r\n0\r\n\r\n";
        let (status, body) = parse_response(chunked).unwrap();
        assert_eq!((status, body["e"].as_i64()), (404, Some(2)));
        assert!(parse_response(b"garbage").is_err());
    }
}

//! A small HTTP/1.1 client (hyper) for the agent's own API: the CLI asking its local agent, an
//! agent forwarding a write to the master, the alert webhook. With a [`TlsClient`] the exchange
//! runs over TLS and the answering agent's certificate is verified; without, plain HTTP.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::tls::TlsClient;

/// Why a request failed (before any HTTP status).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection.
    #[error("cannot reach {address}: {detail}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        detail: String,
    },
    /// No complete answer in time.
    #[error("{address} did not answer within {millis} ms")]
    Timeout {
        /// Where.
        address: String,
        /// The limit.
        millis: u64,
    },
    /// The exchange broke.
    #[error("{address}: {detail}")]
    Http {
        /// Where.
        address: String,
        /// Why.
        detail: String,
    },
}

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// The body (JSON for the API).
    pub body: Vec<u8>,
}

/// The largest answer read (a status of 1,000 hosts is far below).
const MAX_BODY: usize = 32 << 20;

/// One request to `address` (over TLS with `tls`); `token` as a bearer token; `extra` headers.
/// The whole exchange is bounded by `timeout`.
#[allow(clippy::too_many_arguments)]
pub async fn request(
    address: &str,
    tls: Option<&TlsClient>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    extra: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, ClientError> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| ClientError::Connect { address: address.to_string(), detail: e.to_string() })?;
        let http = |detail: String| ClientError::Http { address: address.to_string(), detail };
        let driver;
        let mut sender = match tls {
            Some(tls) => {
                let stream = tls.connect(address, stream).await.map_err(|e| ClientError::Connect {
                    address: address.to_string(),
                    detail: format!("TLS: {e} (is its certificate the one [api] ca-file trusts?)"),
                })?;
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| http(e.to_string()))?;
                driver = tokio::spawn(async move { connection.await.map_err(drop) });
                sender
            }
            None => {
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| http(e.to_string()))?;
                driver = tokio::spawn(async move { connection.await.map_err(drop) });
                sender
            }
        };
        let mut builder = hyper::Request::builder().method(method).uri(path).header("host", address);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        let request =
            builder.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| http(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| http(e.to_string()))?;
        let status = response.status().as_u16();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_BODY);
        let body = limited.collect().await.map_err(|e| http(e.to_string()))?.to_bytes().to_vec();
        driver.abort();
        Ok(Response { status, body })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout { address: address.to_string(), millis: timeout.as_millis() as u64 })?
}

/// `http://HOST:PORT/PATH` → (`HOST:PORT`, `/PATH`).
pub fn parse_http_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("`{url}`: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("`{url}`: no host"));
    }
    let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(parse_http_url("http://10.0.0.1:9000/hook"), Ok(("10.0.0.1:9000".into(), "/hook".into())));
        assert_eq!(parse_http_url("http://alerts.example"), Ok(("alerts.example:80".into(), "/".into())));
        assert!(parse_http_url("https://x/").is_err());
        assert!(parse_http_url("http:///x").is_err());
    }
}

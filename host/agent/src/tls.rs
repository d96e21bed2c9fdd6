//! TLS for the API (rustls with the ring provider): the agent serves it with `[api] cert-file`
//! and `key-file`; the CLI and agents forwarding to the master verify the answering agent's
//! certificate against `[api] ca-file` (default: the cert-file itself — one self-signed pair
//! for the whole cluster, naming every host's API address, as `halo agent --make-cert` writes).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// rustls on *ring*: pure Rust and assembly, no C toolchain beyond `cc` (aws-lc-rs, rustls'
/// default, builds AWS-LC from C on every clean CI machine). *ring* lacks the post-quantum key
/// exchange, hence rustls' deprecation note; the API runs on a management network.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it (PEM, -----BEGIN CERTIFICATE-----)", path.display()));
    }
    Ok(certs)
}

/// The server side: `cert` (PEM, the chain, leaf first) and `key` (PEM).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = certificates(cert)?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and its key do not go together: {e}"))?;
    Ok(Arc::new(config))
}

/// The client side: trusts the certificates in one PEM file.
#[derive(Clone, Debug)]
pub struct TlsClient(Arc<rustls::ClientConfig>);

impl TlsClient {
    /// Trusts what `ca` holds (a CA, or the cluster's self-signed certificate).
    pub fn trusting(ca: &Path) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(ca)? {
            roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self(Arc::new(config)))
    }

    /// A TLS connection over `stream` to `address` (`HOST:PORT`; HOST is checked against the
    /// certificate: an IP address against its IP names).
    pub async fn connect(
        &self,
        address: &str,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        tokio_rustls::TlsConnector::from(Arc::clone(&self.0)).connect(name, stream).await
    }
}

/// A self-signed certificate and its key (PEM) for `names` (IP addresses and host names, as
/// clients will reach the agents).
pub fn make_cert(names: &[String]) -> Result<(String, String), String> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| e.to_string())?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_pair_loads_and_a_bad_file_says_what_is_wrong() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = make_cert(&["127.0.0.1".into(), "host-1".into()]).expect("made");
        let (cert_file, key_file) = (dir.path().join("api.crt"), dir.path().join("api.key"));
        std::fs::write(&cert_file, &cert).expect("write");
        std::fs::write(&key_file, &key).expect("write");
        server_config(&cert_file, &key_file).expect("the pair serves");
        TlsClient::trusting(&cert_file).expect("the certificate is trusted");
        let (other, other_key) = make_cert(&["127.0.0.1".into()]).expect("made");
        std::fs::write(dir.path().join("other.key"), other_key).expect("write");
        let mismatch = server_config(&cert_file, &dir.path().join("other.key")).expect_err("refused");
        assert!(mismatch.contains("do not go together"), "{mismatch}");
        std::fs::write(dir.path().join("garbage"), "not pem").expect("write");
        let garbage = TlsClient::trusting(&dir.path().join("garbage")).expect_err("refused");
        assert!(garbage.contains("no certificate"), "{garbage}");
        assert!(other.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}

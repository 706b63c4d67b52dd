//! A certificate authority made at run time, and HTTPS serving with a certificate it
//! issued for `localhost` and `127.0.0.1`: clients trust it through `SSL_CERT_FILE`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

pub struct TestCa {
    ca_file: tempfile::NamedTempFile,
    /// The server's certificate and key (PEM), for servers that read files (Redis).
    server_cert_file: tempfile::NamedTempFile,
    server_key_file: tempfile::NamedTempFile,
    acceptor: TlsAcceptor,
}

impl TestCa {
    pub fn new() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Cascade test CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let server_key = KeyPair::generate().expect("server key");
        let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server parameters")
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let mut ca_file = tempfile::NamedTempFile::new().expect("CA file");
        ca_file
            .write_all(ca.pem().as_bytes())
            .expect("write CA file");
        let pem_file = |pem: String| {
            let mut file = tempfile::NamedTempFile::new().expect("PEM file");
            file.write_all(pem.as_bytes()).expect("write PEM file");
            file
        };
        let server_cert_file = pem_file(server.pem());
        let server_key_file = pem_file(server_key.serialize_pem());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(server.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .expect("server TLS configuration");
        Self {
            ca_file,
            server_cert_file,
            server_key_file,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }

    /// The CA certificate (PEM), for `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> &Path {
        self.ca_file.path()
    }

    /// The certificate it issued for `localhost` and `127.0.0.1` (PEM).
    pub fn server_cert_file(&self) -> &Path {
        self.server_cert_file.path()
    }

    /// That certificate's private key (PEM).
    pub fn server_key_file(&self) -> &Path {
        self.server_key_file.path()
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `router` over TLS on `listener` until the runtime stops.
pub fn serve_tls(listener: tokio::net::TcpListener, router: axum::Router, acceptor: TlsAcceptor) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
                    .await;
                if let Err(error) = served {
                    tracing::debug!(%error, "TLS connection ended");
                }
            });
        }
    });
}

//! TLS for gRPC, from PEM files: a server's certificate and key, and the CA its clients'
//! certificates must chain to when it asks for them (mTLS); a client's trusted CA, and the
//! certificate it presents. Files are read once, at start: a missing or unreadable file
//! stops the service naming it.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
#[error("cannot read the TLS {what} {path}: {source}")]
pub struct TlsError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

pub(crate) fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn identity(cert_file: &Path, key_file: &Path) -> Result<Identity, TlsError> {
    Ok(Identity::from_pem(
        read("certificate", cert_file)?,
        read("key", key_file)?,
    ))
}

/// A server presenting `cert_file` (with `key_file`); with `client_ca_file`, every client
/// must present a certificate it issued.
pub fn server(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<ServerTlsConfig, TlsError> {
    let config = ServerTlsConfig::new().identity(identity(cert_file, key_file)?);
    Ok(match client_ca_file {
        Some(ca) => config.client_ca_root(Certificate::from_pem(read("client CA", ca)?)),
        None => config,
    })
}

/// A client trusting `ca_file` (or the system's roots without one) and, with a
/// certificate and key, presenting them.
pub fn client(
    ca_file: Option<&Path>,
    identity_files: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, TlsError> {
    let config = match ca_file {
        Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("CA", ca)?)),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    Ok(match identity_files {
        Some((cert, key)) => config.identity(identity(cert, key)?),
        None => config,
    })
}

/// Both of a certificate and its key, or neither.
pub fn pair<'a>(
    cert_file: Option<&'a Path>,
    key_file: Option<&'a Path>,
) -> Option<(&'a Path, &'a Path)> {
    cert_file.zip(key_file)
}

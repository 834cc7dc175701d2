//! TLS client configurations (rustls with the `ring` provider, no OpenSSL) for PostgreSQL and
//! Redis: which roots to trust (a CA file, or the system store, which honours `SSL_CERT_FILE`),
//! and how much of the server's certificate to check (libpq's `sslmode`s, contract §11).
//! See docs/decisions/0010-tls-rustls.md.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt only: any certificate is accepted (libpq's `sslmode=require` without a root
    /// certificate). Protects against eavesdropping, not against an active impostor.
    Nothing,
    /// The chain must lead to a trusted root; the host name is not compared (`verify-ca`).
    Chain,
    /// The chain, and the host the client connected to must be in the certificate's
    /// subjectAltName (`verify-full`; the default for `rediss://`).
    ChainAndHost,
}

/// The one crypto provider of this process (`ring`). Installed as the process default too:
/// the redis crate builds its rustls configuration with `ClientConfig::builder()`, which uses it.
pub fn provider() -> Arc<CryptoProvider> {
    // rustls 0.23.48 deprecates `ring`'s provider for lacking post-quantum key exchange; it is
    // kept on purpose (decision 0010): no C library to build with cmake, and PostgreSQL and
    // Redis servers do not offer ML-KEM today.
    #[allow(deprecated)]
    let p = Arc::new(rustls::crypto::ring::default_provider());
    // Err = already installed (by an earlier call): the same provider.
    let _ = CryptoProvider::install_default(p.as_ref().clone());
    p
}

/// The certificates of a PEM file (a CA bundle), as a root store. An unreadable file, or one
/// with no certificate in it, is an error that names the file.
pub fn roots_from_file(path: &Path) -> anyhow::Result<RootCertStore> {
    let pem = std::fs::read(path).with_context(|| format!("reading CA file {}", path.display()))?;
    roots_from_pem(&pem).with_context(|| format!("CA file {}", path.display()))
}

pub fn roots_from_pem(pem: &[u8]) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.context("not a PEM certificate")?;
        roots.add(cert).context("not a usable CA certificate")?;
    }
    if roots.is_empty() {
        bail!("no certificate in it");
    }
    Ok(roots)
}

/// The system's trust store (what `SSL_CERT_FILE` / `SSL_CERT_DIR` name when set, else the
/// distribution's bundle).
pub fn system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "it is empty".into());
        bail!("no usable certificate in the system trust store: {why}");
    }
    Ok(roots)
}

/// A client configuration trusting `roots` and checking as much as `verify` says.
pub fn client_config(roots: RootCertStore, verify: Verify) -> anyhow::Result<ClientConfig> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = match verify {
        Verify::ChainAndHost => builder.with_root_certificates(roots).with_no_client_auth(),
        Verify::Chain => {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("TLS certificate verifier")?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Whether `e` (or an error it wraps) is a TLS certificate the client refused: a configuration
/// problem (wrong CA, wrong host name, expired certificate), not an outage, so start-up stops
/// on it instead of retrying.
pub fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if is_certificate_error(inner) {
                    return true;
                }
            }
        }
        next = e.source();
    }
    false
}

/// `verify-ca`: the webpki chain check, with a name mismatch forgiven. rustls checks the chain
/// (and validity dates) before the name, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require`: any certificate; the handshake's signatures are still checked (the server holds
/// the key of the certificate it sent).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

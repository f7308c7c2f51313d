//! rustls client configuration for a leg.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{CipherSuite, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;

use crate::config::LegConfig;

/// TLS settings that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// The CA file is unreadable or holds no certificate.
    #[error("CA file {0}: {1}")]
    CaFile(String, String),
    /// The pin is not 64 hex digits.
    #[error("pin_sha256 must be 64 hex digits")]
    BadPin,
}

pub(super) fn connector(config: &LegConfig) -> Result<TlsConnector, TlsSetupError> {
    let provider = Arc::new(provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions");
    let pin = config.pin_sha256.as_deref().map(parse_pin).transpose()?;
    let mut tls = if config.insecure || pin.is_some() {
        let verifier = Arc::new(PinVerifier { pin, provider });
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(roots(config)?)
            .with_no_client_auth()
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(tls)))
}

/// ring's suites with AES-128-GCM offered first (the server picks by our order unless it
/// has its own). A leg's TLS protects the hop to the CDN, not the tunnel's content, which
/// has its own AEAD (docs/PROTOCOL.md §13); AES-128-GCM is TLS 1.3's mandatory suite and costs
/// less per byte than AES-256-GCM, which every record already pays for once.
fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    let aes_128 = [
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    // A stable sort: the other suites keep their order.
    provider
        .cipher_suites
        .sort_by_key(|s| !aes_128.contains(&s.suite()));
    provider
}

fn roots(config: &LegConfig) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &config.ca_file {
        let err = |e: String| TlsSetupError::CaFile(path.display().to_string(), e);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate found".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| err(e.to_string()))?;
        }
    }
    Ok(roots)
}

fn parse_pin(hex: &str) -> Result<[u8; 32], TlsSetupError> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return Err(TlsSetupError::BadPin);
    }
    let mut pin = [0u8; 32];
    for (i, byte) in pin.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| TlsSetupError::BadPin)?;
    }
    Ok(pin)
}

/// Accepts the end-entity certificate whose SHA-256 equals the pin (or, with no pin, any
/// certificate: the explicit insecure switch). Handshake signatures are always verified, so
/// the peer must hold the certificate's private key.
#[derive(Debug)]
struct PinVerifier {
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(pin)
                if ring::digest::digest(&ring::digest::SHA256, end_entity).as_ref() == pin =>
            {
                Ok(ServerCertVerified::assertion())
            }
            Some(_) => Err(rustls::Error::General(
                "certificate does not match pin_sha256".into(),
            )),
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

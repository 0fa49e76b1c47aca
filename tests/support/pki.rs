#![allow(dead_code)]
//! A throwaway CA and certificates for loopback TLS tests (rcgen, ring).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA that signs leaf certificates.
pub struct Ca {
    pub cert_pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert_pem: cert.pem(), cert, key }
    }

    /// A CA named `name` valid from `from` to `until` (years, January 1):
    /// an intermediate signed by `parent`, or a root when that is `None`.
    pub fn dated(name: &str, from: i32, until: i32, parent: Option<&Ca>) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        params.use_authority_key_identifier_extension = parent.is_some();
        let key = KeyPair::generate().unwrap();
        let cert = match parent {
            Some(p) => params.signed_by(&key, &p.cert, &p.key).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        Ca { cert_pem: cert.pem(), cert, key }
    }

    /// A leaf for 127.0.0.1 and localhost, with common name `cn`.
    pub fn leaf(&self, cn: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }
}

impl Ca {
    /// A leaf for localhost valid from `from` to `until` (years, January 1).
    pub fn leaf_dated(&self, cn: &str, from: i32, until: i32) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    /// A leaf signed by this CA with a key of the given algorithm.
    pub fn leaf_with(&self, cn: &str, alg: &'static rcgen::SignatureAlgorithm) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate_for(alg).unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }
}

/// A self-signed certificate for localhost and 127.0.0.1 marked `CA:TRUE`,
/// as `openssl req -x509` makes one.
pub fn self_signed_ca_leaf(cn: &str) -> Leaf {
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
}

/// Roots of trust holding only the CA certificate `ca_pem`.
fn roots(ca_pem: &str) -> rustls::RootCertStore {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    roots
}

/// A TLS connector that trusts only `ca_pem` and offers ALPN `http/1.1`.
pub fn connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    connector_offering(ca_pem, &[b"http/1.1"])
}

/// A TLS connector that trusts only `ca_pem` and offers the ALPN protocols
/// `alpn` (none: no ALPN extension).
pub fn connector_offering(ca_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots(ca_pem))
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

impl Ca {
    /// A leaf for localhost signed by this CA, whose key is `key_pem`
    /// (PKCS#8; an RSA key among them, which rcgen cannot make with ring).
    pub fn leaf_for_key(&self, cn: &str, key_pem: &str) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::from_pem(key_pem).unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key_pem.to_owned(), der: cert.der().to_vec() }
    }
}

/// [`connector`] for a client whose first key share is for P-521, which
/// authgate (rustls with ring) does not take, then X25519: the server asks
/// for an X25519 share with a HelloRetryRequest, as it does of
/// `openssl s_client -groups P-521:X25519`.
pub fn connector_needing_a_retry(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![&P521_NAMED, rustls::crypto::ring::kx_group::X25519];
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(ca_pem))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Nor does it remember the group the server asked for (rustls keeps it
    // with the sessions to resume) and offer it first the next time.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// A key share the client calls P-521 (an X25519 one underneath: the
/// server never takes it, so it is never completed).
#[derive(Debug)]
struct P521Named;

static P521_NAMED: P521Named = P521Named;

impl rustls::crypto::SupportedKxGroup for P521Named {
    fn start(&self) -> Result<Box<dyn rustls::crypto::ActiveKeyExchange>, rustls::Error> {
        Ok(Box::new(P521Share(rustls::crypto::ring::kx_group::X25519.start()?)))
    }

    fn name(&self) -> rustls::NamedGroup {
        rustls::NamedGroup::secp521r1
    }
}

struct P521Share(Box<dyn rustls::crypto::ActiveKeyExchange>);

impl rustls::crypto::ActiveKeyExchange for P521Share {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<rustls::crypto::SharedSecret, rustls::Error> {
        self.0.complete(peer)
    }

    fn pub_key(&self) -> &[u8] {
        self.0.pub_key()
    }

    fn group(&self) -> rustls::NamedGroup {
        rustls::NamedGroup::secp521r1
    }
}

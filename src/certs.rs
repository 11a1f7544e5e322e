//! The clusterset's certificates and the TLS configurations built from them.
//!
//! One CA per clusterset (`causeway certs init`) signs a certificate per cluster (client auth,
//! CN = cluster id and SAN URI `causeway://cluster/<id>`) and one for the broker (server auth,
//! SAN DNS `broker.causeway`, the fixed name gateways verify, so the broker's address need not
//! be in it). The broker learns which cluster a connection speaks for from its certificate
//! ([`cluster_id_from_cert`]), never from what the cluster claims. Files in a TLS directory:
//! `ca.crt`, `tls.crt`, `tls.key` (PEM, keys mode 0600). TLS 1.3 only, ALPN `causeway/1`.
//! The QUIC shells that use these configs are `sync/quic.rs` and `broker/server.rs`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::clock;
use crate::model::{ClusterId, IdError};

/// The ALPN protocol of the sync protocol, version 1.
pub const ALPN: &[u8] = b"causeway/1";
/// The name gateways verify the broker's certificate against.
pub const BROKER_SERVER_NAME: &str = "broker.causeway";
/// The SAN URI prefix that names a cluster in its certificate.
pub const CLUSTER_URI_PREFIX: &str = "causeway://cluster/";

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
const CA_COMMON_NAME: &str = "causeway clusterset CA";
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Backdating tolerates clocks a little behind the issuer's.
const BACKDATE: Duration = Duration::from_secs(3600);
/// Keeps idle sessions open through NATs and the idle timeout. A broker whose host died (no
/// close, no reset) is noticed within `IDLE_TIMEOUT`, and the gateway moves to its next
/// `--broker`; a keepalive a second costs each session one small datagram per second.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(6);

/// A certificate or TLS file could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path} already exists; refusing to overwrite a CA")]
    CaExists { path: PathBuf },
    #[error("creating directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not valid PEM")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no usable private key")]
    Key {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("{path}: the CA certificate is not a usable trust anchor")]
    TrustAnchor {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("generating a certificate")]
    Generate(#[source] rcgen::Error),
    #[error("building the TLS configuration from {dir}")]
    Tls {
        dir: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("building the client certificate verifier from {dir}")]
    Verifier {
        dir: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("the TLS configuration has no QUIC-capable cipher suite")]
    Quic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("certificate is not valid X.509")]
    Parse,
    #[error("certificate names no cluster (no SAN URI {CLUSTER_URI_PREFIX}<id>)")]
    NoClusterId,
    #[error("certificate names more than one cluster")]
    ManyClusterIds,
    #[error("certificate names an invalid cluster id")]
    BadClusterId(#[source] IdError),
    #[error("{path} is not the key of the certificate beside it (files being replaced?)")]
    KeyMismatch { path: PathBuf },
    #[error("{path} is a certificate of cluster {found}, not {expected}")]
    WrongCluster {
        path: PathBuf,
        found: ClusterId,
        expected: ClusterId,
    },
}

/// Creates a new clusterset CA in `out`: `ca.crt` and `ca.key` (0600). Refuses to overwrite.
pub fn init_ca(out: &Path) -> Result<(), CertError> {
    create_dir(out)?;
    for name in [CA_CERT, CA_KEY] {
        let path = out.join(name);
        if path.exists() {
            return Err(CertError::CaExists { path });
        }
    }
    let key = KeyPair::generate().map_err(CertError::Generate)?;
    let cert = ca_params(CA_VALIDITY)
        .self_signed(&key)
        .map_err(CertError::Generate)?;
    // Key first, with create_new: two racing inits cannot both win.
    write_new(
        &out.join(CA_KEY),
        key.serialize_pem().as_bytes(),
        0o600,
        true,
    )?;
    write_new(&out.join(CA_CERT), cert.pem().as_bytes(), 0o644, true)
}

/// Issues a cluster's certificate (client auth) into `out`: `ca.crt`, `tls.crt`, `tls.key`.
pub fn issue_cluster(ca_dir: &Path, cluster: &ClusterId, out: &Path) -> Result<(), CertError> {
    let issued = sign(ca_dir, cluster_params(cluster)?)?;
    write_issued(&issued, out)
}

/// The serials of the certificates a rotation replaced and issued (lowercase hex, as the
/// broker's deny list takes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub old_serial: String,
    pub new_serial: String,
}

/// Issues a new key and certificate for `cluster` into `out`, which must already hold one of
/// that cluster's certificates. The old certificate stays valid (revoke it by serial on the
/// broker once every gateway runs the new one). Each file is replaced atomically (written
/// aside, then renamed), key first; a reader that catches the key new and the certificate old
/// gets [`CertError::KeyMismatch`] and tries again later.
pub fn rotate_cluster(
    ca_dir: &Path,
    cluster: &ClusterId,
    out: &Path,
) -> Result<Rotated, CertError> {
    let cert_path = out.join(TLS_CERT);
    let old = read_certs(&cert_path)?;
    let found = cluster_id_from_cert(&old[0])?;
    if &found != cluster {
        return Err(CertError::WrongCluster {
            path: cert_path,
            found,
            expected: cluster.clone(),
        });
    }
    let old_serial = cert_serial(&old[0])?;
    let issued = sign(ca_dir, cluster_params(cluster)?)?;
    let new_serial = cert_serial(
        &CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).map_err(|source| {
            CertError::Pem {
                path: cert_path.clone(),
                source,
            }
        })?,
    )?;
    replace_atomically(&out.join(TLS_KEY), issued.key_pem.as_bytes(), 0o600)?;
    replace_atomically(&cert_path, issued.cert_pem.as_bytes(), 0o644)?;
    Ok(Rotated {
        old_serial,
        new_serial,
    })
}

/// The serial number of a certificate: lowercase hex, no separators or leading zeros.
pub fn cert_serial(der: &[u8]) -> Result<String, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| CertError::Parse)?;
    let hex: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let trimmed = hex.trim_start_matches('0');
    Ok(if trimmed.is_empty() { "0" } else { trimmed }.to_owned())
}

fn cluster_params(cluster: &ClusterId) -> Result<CertificateParams, CertError> {
    let mut params = leaf_params();
    params
        .distinguished_name
        .push(DnType::CommonName, cluster.as_str());
    params.subject_alt_names = vec![SanType::URI(
        format!("{CLUSTER_URI_PREFIX}{cluster}")
            .try_into()
            .map_err(CertError::Generate)?,
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// Issues the broker's certificate (server auth, SAN DNS `broker.causeway`) into `out`.
pub fn issue_broker(ca_dir: &Path, out: &Path) -> Result<(), CertError> {
    let mut params = leaf_params();
    params
        .distinguished_name
        .push(DnType::CommonName, BROKER_SERVER_NAME);
    params.subject_alt_names = vec![SanType::DnsName(
        BROKER_SERVER_NAME.try_into().map_err(CertError::Generate)?,
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    write_issued(&sign(ca_dir, params)?, out)
}

/// The contents of a TLS directory, parsed.
#[derive(Debug)]
pub struct TlsFiles {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl TlsFiles {
    /// Reads `ca.crt`, `tls.crt` and `tls.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let ca = read_certs(&dir.join(CA_CERT))?;
        let chain = read_certs(&dir.join(TLS_CERT))?;
        let key_path = dir.join(TLS_KEY);
        let pem = read(&key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|source| CertError::Pem {
            path: key_path.clone(),
            source,
        })?;
        if !key_matches(&pem, &chain[0]) {
            return Err(CertError::KeyMismatch { path: key_path });
        }
        Ok(Self { ca, chain, key })
    }

    fn roots(&self, dir: &Path) -> Result<RootCertStore, CertError> {
        let mut roots = RootCertStore::empty();
        for cert in &self.ca {
            roots
                .add(cert.clone())
                .map_err(|source| CertError::TrustAnchor {
                    path: dir.join(CA_CERT),
                    source,
                })?;
        }
        Ok(roots)
    }
}

/// The broker's QUIC server config: presents `tls.crt`, requires a client certificate signed
/// by `ca.crt` (a connection without one fails the handshake).
pub fn server_config(tls_dir: &Path) -> Result<quinn::ServerConfig, CertError> {
    let files = TlsFiles::load(tls_dir)?;
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(files.roots(tls_dir)?),
        provider.clone(),
    )
    .build()
    .map_err(|source| CertError::Verifier {
        dir: tls_dir.to_owned(),
        source,
    })?;
    let tls_err = |source| CertError::Tls {
        dir: tls_dir.to_owned(),
        source,
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(files.chain, files.key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(CertError::Quic)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport()));
    Ok(config)
}

/// A gateway's QUIC client config: presents `tls.crt`, trusts only `ca.crt`. Connect with
/// server name [`BROKER_SERVER_NAME`].
pub fn client_config(tls_dir: &Path) -> Result<quinn::ClientConfig, CertError> {
    let files = TlsFiles::load(tls_dir)?;
    let tls_err = |source| CertError::Tls {
        dir: tls_dir.to_owned(),
        source,
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(files.roots(tls_dir)?)
        .with_client_auth_cert(files.chain, files.key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(CertError::Quic)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport()));
    Ok(config)
}

/// The cluster a (verified) certificate speaks for: its `causeway://cluster/<id>` SAN URI.
pub fn cluster_id_from_cert(der: &[u8]) -> Result<ClusterId, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| CertError::Parse)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| CertError::Parse)?;
    let mut ids = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(CLUSTER_URI_PREFIX),
            _ => None,
        });
    let id = ids.next().ok_or(CertError::NoClusterId)?;
    if ids.next().is_some() {
        return Err(CertError::ManyClusterIds);
    }
    ClusterId::new(id).map_err(CertError::BadClusterId)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("6 s is a valid idle timeout"),
    ));
    transport
}

/// The CA's parameters. Issuing rebuilds them rather than parsing `ca.crt`: the issuer name
/// in a leaf must be byte-identical to the CA's subject, and rcgen encodes it the same way.
fn ca_params(validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let now = clock::wall_now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn leaf_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let now = clock::wall_now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + LEAF_VALIDITY).into();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params
}

/// A freshly signed certificate and its key, PEM.
struct Issued {
    ca_pem: Vec<u8>,
    key_pem: String,
    cert_pem: String,
}

fn sign(ca_dir: &Path, params: CertificateParams) -> Result<Issued, CertError> {
    let ca_cert_path = ca_dir.join(CA_CERT);
    let ca_pem = read(&ca_cert_path)?;
    // Parse it now so a broken CA is reported here, not at the first handshake.
    read_certs(&ca_cert_path)?;
    let ca_key_path = ca_dir.join(CA_KEY);
    let ca_key_pem = String::from_utf8(read(&ca_key_path)?).map_err(|_| CertError::Key {
        path: ca_key_path.clone(),
        source: rcgen::Error::CouldNotParseKeyPair,
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|source| CertError::Key {
        path: ca_key_path,
        source,
    })?;
    let issuer = Issuer::new(ca_params(CA_VALIDITY), ca_key);

    let key = KeyPair::generate().map_err(CertError::Generate)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(CertError::Generate)?;
    Ok(Issued {
        ca_pem,
        key_pem: key.serialize_pem(),
        cert_pem: cert.pem(),
    })
}

fn write_issued(issued: &Issued, out: &Path) -> Result<(), CertError> {
    create_dir(out)?;
    write_new(&out.join(CA_CERT), &issued.ca_pem, 0o644, false)?;
    write_new(&out.join(TLS_KEY), issued.key_pem.as_bytes(), 0o600, false)?;
    write_new(
        &out.join(TLS_CERT),
        issued.cert_pem.as_bytes(),
        0o644,
        false,
    )
}

/// Whether the PEM private key is the one the certificate was issued for.
fn key_matches(key_pem: &[u8], cert: &CertificateDer<'_>) -> bool {
    let Ok(key_pem) = std::str::from_utf8(key_pem) else {
        return false;
    };
    let Ok(key) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert) else {
        return false;
    };
    use rcgen::PublicKeyData as _;
    key.der_bytes() == &*cert.tbs_certificate.subject_pki.subject_public_key.data
}

/// Replaces `path` so that readers see the old contents or the new, never a mix: write a
/// sibling temporary file with `mode`, fsync, rename over, fsync the directory.
fn replace_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let file_name = path
        .file_name()
        .expect("callers pass a file path")
        .to_string_lossy();
    let temp = path.with_file_name(format!(".{file_name}.new"));
    write_new(&temp, contents, mode, false)?;
    fs::rename(&temp, path).map_err(|source| CertError::Write {
        path: path.to_owned(),
        source,
    })?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| CertError::Write {
                path: dir.to_owned(),
                source,
            })?;
    }
    Ok(())
}

/// Test certificates no `causeway certs` command makes: expired and self-signed ones.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Issues a cluster certificate valid only between `not_before` and `not_after`.
    pub(crate) fn issue_cluster_valid(
        ca_dir: &Path,
        cluster: &ClusterId,
        out: &Path,
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> Result<(), CertError> {
        let mut params = cluster_params(cluster)?;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        write_issued(&sign(ca_dir, params)?, out)
    }

    /// A cluster certificate signed by its own key (it names `cluster`, but no CA vouches
    /// for it); `ca.crt` is the real CA's, so the broker is trusted.
    pub(crate) fn self_signed_cluster(
        ca_dir: &Path,
        cluster: &ClusterId,
        out: &Path,
    ) -> Result<(), CertError> {
        let key = KeyPair::generate().map_err(CertError::Generate)?;
        let cert = cluster_params(cluster)?
            .self_signed(&key)
            .map_err(CertError::Generate)?;
        write_issued(
            &Issued {
                ca_pem: read(&ca_dir.join(CA_CERT))?,
                key_pem: key.serialize_pem(),
                cert_pem: cert.pem(),
            },
            out,
        )
    }
}

fn create_dir(path: &Path) -> Result<(), CertError> {
    fs::create_dir_all(path).map_err(|source| CertError::CreateDir {
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Writes a file with `mode` from its creation (a key is never world-readable, even briefly).
fn write_new(path: &Path, contents: &[u8], mode: u32, create_new: bool) -> Result<(), CertError> {
    let write_err = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).mode(mode);
    if create_new {
        options.create_new(true);
    } else {
        // Re-issuing replaces the old files; remove first so `mode` applies to a fresh inode.
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(write_err(e)),
            _ => {}
        }
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(write_err)?;
    file.write_all(contents).map_err(write_err)?;
    file.sync_all().map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn id(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    #[test]
    fn init_ca_writes_a_private_key_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let before = fs::read(dir.path().join(CA_KEY)).unwrap();
        assert!(matches!(
            init_ca(dir.path()),
            Err(CertError::CaExists { .. })
        ));
        assert_eq!(fs::read(dir.path().join(CA_KEY)).unwrap(), before);
    }

    #[test]
    fn cluster_certificate_carries_its_cluster_id() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, out) = (dir.path().join("ca"), dir.path().join("c1"));
        init_ca(&ca).unwrap();
        issue_cluster(&ca, &id("c1"), &out).unwrap();
        let files = TlsFiles::load(&out).unwrap();
        assert_eq!(cluster_id_from_cert(&files.chain[0]).unwrap(), id("c1"));
        let mode = fs::metadata(out.join(TLS_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Both configs build from the files.
        issue_broker(&ca, &dir.path().join("broker")).unwrap();
        server_config(&dir.path().join("broker")).unwrap();
        client_config(&out).unwrap();
    }

    #[test]
    fn broker_certificate_names_no_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, out) = (dir.path().join("ca"), dir.path().join("broker"));
        init_ca(&ca).unwrap();
        issue_broker(&ca, &out).unwrap();
        let files = TlsFiles::load(&out).unwrap();
        assert!(matches!(
            cluster_id_from_cert(&files.chain[0]),
            Err(CertError::NoClusterId)
        ));
    }

    #[test]
    fn rotate_issues_a_new_key_and_certificate_for_the_same_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, out) = (dir.path().join("ca"), dir.path().join("c1"));
        init_ca(&ca).unwrap();
        issue_cluster(&ca, &id("c1"), &out).unwrap();
        let before = TlsFiles::load(&out).unwrap();
        let rotated = rotate_cluster(&ca, &id("c1"), &out).unwrap();
        let after = TlsFiles::load(&out).unwrap();
        assert_ne!(rotated.old_serial, rotated.new_serial);
        assert_eq!(cert_serial(&before.chain[0]).unwrap(), rotated.old_serial);
        assert_eq!(cert_serial(&after.chain[0]).unwrap(), rotated.new_serial);
        assert_eq!(cluster_id_from_cert(&after.chain[0]).unwrap(), id("c1"));
        let mode = fs::metadata(out.join(TLS_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        client_config(&out).unwrap();
    }

    #[test]
    fn rotate_refuses_another_clusters_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, out) = (dir.path().join("ca"), dir.path().join("c1"));
        init_ca(&ca).unwrap();
        issue_cluster(&ca, &id("c1"), &out).unwrap();
        let before = fs::read(out.join(TLS_CERT)).unwrap();
        let err = rotate_cluster(&ca, &id("c2"), &out).unwrap_err();
        assert!(matches!(err, CertError::WrongCluster { .. }), "{err}");
        assert_eq!(fs::read(out.join(TLS_CERT)).unwrap(), before);
        let err = rotate_cluster(&ca, &id("c1"), &dir.path().join("none")).unwrap_err();
        assert!(matches!(err, CertError::Read { .. }), "{err}");
    }

    #[test]
    fn key_of_another_certificate_is_refused_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca).unwrap();
        issue_cluster(&ca, &id("c1"), &dir.path().join("a")).unwrap();
        issue_cluster(&ca, &id("c1"), &dir.path().join("b")).unwrap();
        fs::copy(dir.path().join("b/tls.key"), dir.path().join("a/tls.key")).unwrap();
        assert!(matches!(
            TlsFiles::load(&dir.path().join("a")),
            Err(CertError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn garbage_certificate_is_a_parse_error() {
        assert!(matches!(
            cluster_id_from_cert(b"not a certificate"),
            Err(CertError::Parse)
        ));
    }

    #[test]
    fn missing_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue_cluster(dir.path(), &id("c1"), &dir.path().join("out")).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        let err = TlsFiles::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }

    #[test]
    fn errors_can_cross_threads_into_anyhow() {
        fn check<T: std::error::Error + Send + Sync + 'static>() {}
        check::<CertError>();
        check::<crate::sync::Error>();
        check::<crate::broker::StoreError>();
        check::<crate::broker::Rejected>();
    }
}

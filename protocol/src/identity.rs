//! Identities: a key pair kept as a self-signed certificate plus a private
//! key, and the fingerprint that names it.
//!
//! Both the agent and every `ctl` user have one. Nobody checks the
//! certificate's names or dates: trust is the fingerprint of the public key,
//! as with ssh's host keys and authorized keys. This module creates, saves and
//! loads identities; deciding whom to trust is [`crate::tls`]'s and its
//! callers' job.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The SHA-256 of a certificate's DER-encoded SubjectPublicKeyInfo.
///
/// Printed as `SHA256:<base64 without padding>`, the form ssh uses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded X.509 certificate's public key.
    ///
    /// # Errors
    /// [`IdentityError::BadCertificate`] when the bytes are not a certificate.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Result<Self, IdentityError> {
        let parsed = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        Ok(Fingerprint::of_public_key(
            parsed.subject_public_key_info().as_ref(),
        ))
    }

    /// The fingerprint of a DER-encoded SubjectPublicKeyInfo, as
    /// certificates carry it.
    fn of_public_key(spki: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SHA256:{}", STANDARD_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text was not a `SHA256:<base64>` fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a fingerprint: {0:?} (expected SHA256: followed by 43 base64 characters)")]
pub struct ParseFingerprintError(String);

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseFingerprintError(s.to_owned());
        let encoded = s.strip_prefix("SHA256:").ok_or_else(err)?;
        let decoded = STANDARD_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|_| err())?;
        let bytes: [u8; 32] = decoded.try_into().map_err(|_| err())?;
        Ok(Fingerprint(bytes))
    }
}

/// What can go wrong creating or loading an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Creating the key or certificate failed.
    #[error("cannot create identity: {0}")]
    Generate(String),
    /// The identity already exists and would be overwritten.
    #[error("{0} already exists; refusing to overwrite an identity")]
    Exists(PathBuf),
    /// A PEM file held no usable certificate or key.
    #[error("{path}: {reason}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// The certificate did not parse.
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    /// The private key file is readable by others, so it is refused (as ssh does).
    #[error(
        "permissions {mode:04o} for {path} are too open: a private key must not be readable by group or others (run: chmod 600 {path})"
    )]
    KeyTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The private key is not the one the certificate was made for.
    #[error(transparent)]
    KeyMismatch(Box<KeyMismatch>),
}

/// A certificate and a private key of two different identities: a peer
/// would see a fingerprint whose key we do not hold.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} and {} are not one identity (the certificate's fingerprint is {certificate_fingerprint}, the private key's is {key_fingerprint})",
    .certificate.display(),
    key_name(.certificate, .private_key)
)]
pub struct KeyMismatch {
    /// The certificate file.
    pub certificate: PathBuf,
    /// The private key file.
    pub private_key: PathBuf,
    /// The fingerprint of the certificate's public key.
    pub certificate_fingerprint: Fingerprint,
    /// The fingerprint of the private key's public half.
    pub key_fingerprint: Fingerprint,
}

/// The key file as named after its certificate: its bare name when the two
/// are in one directory, as they usually are.
fn key_name(certificate: &Path, private_key: &Path) -> String {
    match private_key.file_name() {
        Some(name) if certificate.parent() == private_key.parent() => {
            name.to_string_lossy().into_owned()
        }
        _ => private_key.display().to_string(),
    }
}

/// A certificate and its private key, loaded and ready for TLS.
#[derive(Debug)]
pub struct Identity {
    /// The self-signed certificate presented to peers.
    pub certificate: CertificateDer<'static>,
    /// The private key; never leaves this process.
    pub private_key: PrivateKeyDer<'static>,
    /// The certificate's fingerprint.
    pub fingerprint: Fingerprint,
    /// The private key made ready to sign, once: that costs a scalar
    /// multiplication, which checking the key at load and presenting it
    /// in TLS would otherwise each pay.
    pub signing_key: Arc<dyn rustls::sign::SigningKey>,
}

/// Where an identity's two files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPaths {
    /// The certificate (PEM), public.
    pub certificate: PathBuf,
    /// The private key (PEM), mode 0600.
    pub private_key: PathBuf,
}

impl IdentityPaths {
    /// `DIR/NAME.crt` and `DIR/NAME.key`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        IdentityPaths {
            certificate: dir.join(format!("{name}.crt")),
            private_key: dir.join(format!("{name}.key")),
        }
    }

    /// Whether either file exists.
    pub fn exists(&self) -> bool {
        self.certificate.exists() || self.private_key.exists()
    }
}

/// The subject (common name) and the one DNS name of every certificate we
/// create. Nobody checks them, and a certificate is shown to anyone who
/// connects (`openssl s_client`), so they say nothing about the machine or
/// the user: no host name, no user name, only what the key is for.
pub const CERTIFICATE_NAME: &str = "rexec";

impl Identity {
    /// Creates a new Ed25519 key pair with a self-signed certificate named
    /// [`CERTIFICATE_NAME`], writes it to `paths` (key file mode 0600,
    /// created exclusively) and returns it.
    ///
    /// # Errors
    /// [`IdentityError::Exists`] when either file exists; I/O and generation
    /// failures otherwise.
    pub fn create(paths: &IdentityPaths) -> Result<Identity, IdentityError> {
        for path in [&paths.certificate, &paths.private_key] {
            if path.exists() {
                return Err(IdentityError::Exists(path.clone()));
            }
        }
        let generate = |e: rcgen::Error| IdentityError::Generate(e.to_string());
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(generate)?;
        let mut params =
            rcgen::CertificateParams::new(vec![CERTIFICATE_NAME.to_owned()]).map_err(generate)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, CERTIFICATE_NAME);
        let certificate = params.self_signed(&key_pair).map_err(generate)?;

        if let Some(parent) = paths.private_key.parent() {
            create_dir(parent)?;
        }
        if let Some(parent) = paths.certificate.parent() {
            create_dir(parent)?;
        }
        write_new(
            &paths.private_key,
            key_pair.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_new(&paths.certificate, certificate.pem().as_bytes(), 0o644)?;
        Identity::load(paths)
    }

    /// Loads an identity, refusing a private key file that group or others
    /// can read, and a key that is not the certificate's.
    ///
    /// # Errors
    /// I/O errors naming the file, [`IdentityError::KeyTooOpen`],
    /// [`IdentityError::BadPem`] for files without a usable certificate or
    /// key, and [`IdentityError::KeyMismatch`].
    pub fn load(paths: &IdentityPaths) -> Result<Identity, IdentityError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        let meta = fs::metadata(&paths.private_key).map_err(io_err(&paths.private_key))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::KeyTooOpen {
                path: paths.private_key.clone(),
                mode,
            });
        }
        let bad_pem = |path: &Path, e: rustls_pki_types::pem::Error| IdentityError::BadPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let cert_pem = fs::read(&paths.certificate).map_err(io_err(&paths.certificate))?;
        let certificate = CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|e| bad_pem(&paths.certificate, e))?;
        let key_pem = fs::read(&paths.private_key).map_err(io_err(&paths.private_key))?;
        let private_key =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad_pem(&paths.private_key, e))?;
        let fingerprint = Fingerprint::of_certificate(&certificate)?;
        // Checked here rather than left to the TLS configuration, which
        // would refuse the pair at every connection in its own words, and
        // after `id` had printed a fingerprint nobody holds the key of.
        let signing_key =
            rustls::crypto::ring::sign::any_supported_type(&private_key).map_err(|_| {
                IdentityError::BadPem {
                    path: paths.private_key.clone(),
                    reason: "not an Ed25519, ECDSA or RSA private key".into(),
                }
            })?;
        if let Some(public) = signing_key.public_key() {
            let key_fingerprint = Fingerprint::of_public_key(public.as_ref());
            if key_fingerprint != fingerprint {
                return Err(IdentityError::KeyMismatch(Box::new(KeyMismatch {
                    certificate: paths.certificate.clone(),
                    private_key: paths.private_key.clone(),
                    certificate_fingerprint: fingerprint,
                    key_fingerprint,
                })));
            }
        }
        Ok(Identity {
            certificate,
            private_key,
            fingerprint,
            signing_key,
        })
    }
}

fn create_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let io_err = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err)?;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_gives_the_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let paths = IdentityPaths::in_dir(dir.path(), "agent");
        let created = Identity::create(&paths).unwrap();
        let loaded = Identity::load(&paths).unwrap();
        assert_eq!(created.fingerprint, loaded.fingerprint);
        let mode = fs::metadata(&paths.private_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn two_identities_differ_and_existing_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::create(&IdentityPaths::in_dir(dir.path(), "a")).unwrap();
        let b = Identity::create(&IdentityPaths::in_dir(dir.path(), "b")).unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        assert!(matches!(
            Identity::create(&IdentityPaths::in_dir(dir.path(), "a")),
            Err(IdentityError::Exists(_))
        ));
        assert_eq!(
            Identity::load(&IdentityPaths::in_dir(dir.path(), "a"))
                .unwrap()
                .fingerprint,
            a.fingerprint
        );
    }

    #[test]
    fn readable_private_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = IdentityPaths::in_dir(dir.path(), "agent");
        Identity::create(&paths).unwrap();
        fs::set_permissions(&paths.private_key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load(&paths).unwrap_err();
        assert!(matches!(err, IdentityError::KeyTooOpen { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let ours = IdentityPaths::in_dir(dir.path(), "client");
        let created = Identity::create(&ours).unwrap();
        let other = Identity::create(&IdentityPaths::in_dir(dir.path(), "other")).unwrap();
        fs::remove_file(&ours.private_key).unwrap();
        fs::copy(dir.path().join("other.key"), &ours.private_key).unwrap();
        fs::set_permissions(&ours.private_key, fs::Permissions::from_mode(0o600)).unwrap();
        let err = Identity::load(&ours).unwrap_err();
        match &err {
            IdentityError::KeyMismatch(mismatch) => {
                assert_eq!(mismatch.certificate_fingerprint, created.fingerprint);
                assert_eq!(mismatch.key_fingerprint, other.fingerprint);
            }
            other => panic!("{other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "{} and client.key are not one identity (",
                ours.certificate.display()
            )),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn fingerprint_text_round_trips_and_rejects_junk() {
        let fp = Fingerprint([0xab; 32]);
        let text = fp.to_string();
        assert!(text.starts_with("SHA256:"));
        assert_eq!(text.len(), "SHA256:".len() + 43);
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        for junk in ["", "SHA256:", "MD5:abc", "SHA256:!!!", "SHA256:YWJj"] {
            assert!(junk.parse::<Fingerprint>().is_err(), "{junk}");
        }
    }
}

//! Trusting the broker by its certificate's fingerprint instead of a CA:
//! the notation (`sha256:HEX`, the SHA-256 of the leaf certificate's DER,
//! as `openssl x509 -noout -fingerprint -sha256` prints it) and the TLS
//! check. Like a pinned ssh host key, the pin is the whole trust: names and
//! validity dates are not looked at, the handshake's signature still is, so
//! only the holder of the certificate's private key passes.

use std::fmt;
use std::str::FromStr;

use rustls::client::danger::ServerCertVerified;
use rustls_pki_types::CertificateDer;

/// The SHA-256 of a certificate's DER, written `sha256:` and 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint([u8; 32]);

impl CertFingerprint {
    /// The fingerprint of `der`, a certificate.
    pub fn of(der: &[u8]) -> CertFingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        CertFingerprint(bytes)
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text is not `sha256:` and 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "broker fingerprint {0:?} is not sha256: and 64 hex digits (the SHA-256 of the broker's certificate, as `openssl x509 -noout -fingerprint -sha256` prints it)"
)]
pub struct ParseCertFingerprintError(String);

impl FromStr for CertFingerprint {
    type Err = ParseCertFingerprintError;

    /// `sha256:` (any case) then 64 hex digits, any case, which may be
    /// paired by `:` as openssl prints them.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ParseCertFingerprintError(text.to_owned());
        let (scheme, hex) = text.trim().split_once(':').ok_or_else(bad)?;
        if !scheme.eq_ignore_ascii_case("sha256") {
            return Err(bad());
        }
        let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(CertFingerprint(bytes))
    }
}

impl CertFingerprint {
    /// Accepts exactly the certificate with this fingerprint.
    pub(crate) fn check(
        &self,
        end_entity: &CertificateDer<'_>,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if CertFingerprint::of(end_entity) == *self {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_reads_as_openssl_prints_it_and_prints_plain() {
        let pin = CertFingerprint::of(b"certificate");
        let plain = pin.to_string();
        assert!(
            plain.starts_with("sha256:") && plain.len() == 7 + 64,
            "{plain}"
        );
        assert_eq!(plain.parse::<CertFingerprint>(), Ok(pin));
        // openssl x509 -noout -fingerprint -sha256: upper case, paired.
        let hex = &plain[7..];
        let paired: Vec<String> = hex
            .as_bytes()
            .chunks(2)
            .map(|p| String::from_utf8_lossy(p).to_uppercase())
            .collect();
        let openssl = format!("SHA256:{}", paired.join(":"));
        assert_eq!(openssl.parse::<CertFingerprint>(), Ok(pin));
    }

    #[test]
    fn anything_else_is_refused_in_one_line() {
        for bad in [
            "",
            "sha256:",
            "sha1:00",
            "sha256:abc",
            &format!("sha256:+{}", "0".repeat(63)),
            &format!("sha256:{}", "g".repeat(64)),
            &format!("sha256:{}", "0".repeat(66)),
            &"0".repeat(64),
            "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
        ] {
            let e = bad.parse::<CertFingerprint>().unwrap_err().to_string();
            assert!(e.starts_with("broker fingerprint"), "{e}");
            assert!(!e.contains('\n'));
        }
    }
}

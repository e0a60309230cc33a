//! Plain words for what ctl prints: library and system errors turned into
//! one short phrase of our own (no error codes, no URLs, no type names),
//! and text that an agent supplied made safe for a terminal.
//!
//! The command's own output is not touched here: it is raw by design, as
//! with ssh. Everything else an agent sends (error messages, its software
//! string) could carry escape sequences that retitle the terminal or forge
//! a `ctl:` line, so it goes through [`agent_text`] before it is shown.

use rexec_protocol::{FrameError, IdentityError};

pub use rexec_protocol::plain::agent_text;

pub use rexec_protocol::plain::{io_error, short_text, tls_error};

/// What went wrong reading or writing frames, in plain words.
pub fn frame_error(e: &FrameError) -> String {
    match e {
        FrameError::Io(e) => io_error(e),
        FrameError::TooLong { len, max } => {
            format!("a message of {len} bytes was announced, more than the {max} allowed")
        }
        FrameError::Truncated { .. } => {
            "the connection closed in the middle of a message".to_owned()
        }
        FrameError::Malformed(_) => {
            "a message could not be read (not the rexec protocol, or another version)".to_owned()
        }
        FrameError::Encode(_) => "a message too large to send".to_owned(),
    }
}

/// What is wrong with an identity, in plain words.
pub fn identity_error(e: &IdentityError) -> String {
    match e {
        IdentityError::Io { path, source } => format!("{}: {}", path.display(), io_error(source)),
        IdentityError::BadPem { path, .. } => format!(
            "{}: not a usable PEM certificate or private key",
            path.display()
        ),
        IdentityError::BadCertificate(_) => "the certificate does not parse".to_owned(),
        IdentityError::Generate(_) => "cannot create a key pair".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn a_tls_failure_under_an_io_error_is_said_in_tls_terms() {
        let tls = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(io_error(&tls), tls_error(&rustls::Error::DecryptError));
        let full = io::Error::from_raw_os_error(nix::libc::ENOSPC);
        assert_eq!(io_error(&full), "no space left on the device");
    }
}

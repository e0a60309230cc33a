//! Plain words for what ctl prints: library and system errors turned into
//! one short phrase of our own (no error codes, no URLs, no type names),
//! and text that an agent supplied made safe for a terminal.
//!
//! The command's own output is not touched here: it is raw by design, as
//! with ssh. Everything else an agent sends (error messages, its software
//! string) could carry escape sequences that retitle the terminal or forge
//! a `ctl:` line, so it goes through [`agent_text`] before it is shown.

use std::io;

use rexec_protocol::{FrameError, IdentityError};

/// `text` with every control character (C0, DEL, C1, and the line and
/// paragraph separators) written as a Rust-style escape, so that it prints
/// as one inert line.
pub fn agent_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// What went wrong with a file, a socket or a pipe, in a few plain words.
pub fn io_error(e: &io::Error) -> String {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return tls_error(tls);
    }
    use io::ErrorKind as K;
    let words = match e.kind() {
        K::NotFound => "no such file or directory",
        K::PermissionDenied => "permission denied",
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset by the other side",
        K::ConnectionAborted => "connection aborted",
        K::BrokenPipe => "the other side closed the connection",
        K::UnexpectedEof => "the other side closed the connection",
        K::TimedOut => "timed out",
        K::StorageFull => "no space left on the device",
        K::ReadOnlyFilesystem => "read-only file system",
        K::QuotaExceeded => "disk quota exceeded",
        K::FileTooLarge => "file too large",
        K::AlreadyExists => "it already exists",
        K::NotADirectory => "not a directory",
        K::IsADirectory => "is a directory",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::NetworkDown => "network down",
        K::AddrNotAvailable => "address not available",
        K::AddrInUse => "address in use",
        K::OutOfMemory => "out of memory",
        K::Interrupted => "interrupted",
        _ => return other_io_error(e),
    };
    words.to_owned()
}

fn other_io_error(e: &io::Error) -> String {
    if let Some(code) = e.raw_os_error() {
        return lower_first(nix::errno::Errno::from_raw(code).desc());
    }
    // A message of the standard library or of getaddrinfo, sometimes with
    // a context in front ("failed to lookup address information: …"):
    // the last part says what happened.
    let text = e.to_string();
    let last = text.rsplit(": ").next().unwrap_or(&text);
    if last.is_empty() || last.contains("://") {
        return "input/output error".to_owned();
    }
    lower_first(&agent_text(last))
}

fn lower_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// What went wrong in TLS, in plain words.
pub fn tls_error(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::AlertReceived(alert) => format!(
            "the other side ended the TLS session ({})",
            alert_words(*alert)
        ),
        E::InvalidCertificate(_) | E::NoCertificatesPresented => {
            "the certificate presented is not acceptable".to_owned()
        }
        E::PeerIncompatible(_) => {
            "the other side does not speak TLS 1.3 with the algorithms we use".to_owned()
        }
        E::DecryptError => "TLS data did not decrypt (corrupted or forged)".to_owned(),
        _ => "the TLS session broke (the other side did not follow the protocol)".to_owned(),
    }
}

fn alert_words(alert: rustls::AlertDescription) -> &'static str {
    use rustls::AlertDescription as A;
    match alert {
        A::AccessDenied | A::CertificateRequired | A::BadCertificate => {
            "our certificate was refused"
        }
        A::HandshakeFailure => "handshake failure",
        A::ProtocolVersion => "unsupported protocol version",
        A::DecryptError | A::BadRecordMac => "decryption failed",
        A::InternalError => "internal error",
        _ => "alert",
    }
}

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

    #[test]
    fn agent_text_cannot_move_the_cursor_or_start_a_line() {
        let hostile = "busy\x1b]0;owned\x07\n\rctl: fake\u{9b}2J\u{2028}";
        let shown = agent_text(hostile);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(
            shown,
            r"busy\u{1b}]0;owned\u{7}\n\rctl: fake\u{9b}2J\u{2028}"
        );
        assert_eq!(agent_text("plain words, é"), "plain words, é");
    }

    #[test]
    fn io_errors_lose_their_codes_and_urls() {
        let full = io::Error::from_raw_os_error(nix::libc::ENOSPC);
        assert_eq!(io_error(&full), "no space left on the device");
        let eof = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: https://docs.rs/x",
        );
        assert_eq!(io_error(&eof), "the other side closed the connection");
        let odd = io::Error::from_raw_os_error(nix::libc::EXDEV);
        assert!(!io_error(&odd).contains("os error"), "{}", io_error(&odd));
        let url = io::Error::other("see: https://docs.rs/y");
        assert!(!io_error(&url).contains("https"));
    }
}

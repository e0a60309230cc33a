//! Plain words for errors that reach a user: a system error turned into
//! one short phrase of our own (no error codes, no URLs, no type names),
//! and text from elsewhere made safe for a terminal. Both sides use them:
//! the agent for the messages it sends (a copy's "cannot read …"), ctl for
//! everything it prints.

use std::io;

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

/// At most `most` characters of `text`, made inert as [`agent_text`]
/// does, with "…" where it was cut: for a field a peer fills that only
/// names something (the software of a hello), which a line quotes in
/// full only at the cost of letting the peer decide the line's length.
pub fn short_text(text: &str, most: usize) -> String {
    match text.char_indices().nth(most) {
        Some((cut, _)) => format!("{}…", agent_text(&text[..cut])),
        None => agent_text(text),
    }
}

/// What went wrong with a file, a socket or a pipe, in a few plain words;
/// a TLS failure in TLS's own terms.
pub fn io_error(e: &io::Error) -> String {
    use io::ErrorKind as K;
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return tls_error(tls);
    }
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

/// What went wrong in TLS, in plain words.
pub fn tls_error(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::AlertReceived(alert) => format!(
            "the other side ended the TLS session ({})",
            alert_words(*alert)
        ),
        E::InvalidCertificate(rustls::CertificateError::BadSignature) => {
            "the signature does not match the certificate presented (not its key)".to_owned()
        }
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

fn other_io_error(e: &io::Error) -> String {
    if let Some(code) = e.raw_os_error() {
        // The system's own words, without std's " (os error N)".
        let text = io::Error::from_raw_os_error(code).to_string();
        let words = text
            .strip_suffix(&format!(" (os error {code})"))
            .unwrap_or(&text);
        return lower_first(words);
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

/// A command line parser's message for bad usage (clap's, rendered) as
/// one line of ours: its first paragraph without the `error:` tag (a list
/// of missing arguments continues it on indented lines; the usage block
/// and tips follow), with Rust's words for a bad number in plain ones.
pub fn usage_message(rendered: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        (
            "number would be zero for non-zero type",
            "it must be 1 or more",
        ),
        ("invalid digit found in string", "not a whole number"),
        ("number too large to fit in target type", "too large"),
        ("cannot parse integer from empty string", "empty"),
    ];
    let lines: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("tip:"))
        .collect();
    let joined = lines.join(" ");
    let mut message = joined
        .strip_prefix("error:")
        .unwrap_or(&joined)
        .trim()
        .to_owned();
    for (rust, ours) in WORDS {
        message = message.replace(rust, ours);
    }
    if message.is_empty() {
        "bad usage".to_owned()
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_cuts_at_a_character_and_escapes_what_is_left() {
        assert_eq!(short_text("ctl 0.1.0", 64), "ctl 0.1.0");
        assert_eq!(short_text("äöü\u{1}xyz", 4), "äöü\\u{1}…");
        // Each `\u{1}` five characters, then the three bytes of "…".
        assert_eq!(short_text(&"\u{1}".repeat(1_000_000), 64).len(), 64 * 5 + 3);
    }

    #[test]
    fn usage_messages_are_one_line_without_rusts_words() {
        let missing = "error: the following required arguments were not provided:\n  <FINGERPRINT>\n\nUsage: rexec-agent authorize <FINGERPRINT>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_message(missing),
            "the following required arguments were not provided: <FINGERPRINT>"
        );
        let zero = "error: invalid value '0' for '--max-sessions <N>': number would be zero for non-zero type\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_message(zero),
            "invalid value '0' for '--max-sessions <N>': it must be 1 or more"
        );
        assert_eq!(usage_message(""), "bad usage");
    }

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
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(io_error(&full), "no space left on the device");
        let eof = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: https://docs.rs/x",
        );
        assert_eq!(io_error(&eof), "the other side closed the connection");
        let odd = io::Error::from_raw_os_error(libc::EXDEV);
        assert_eq!(io_error(&odd), "invalid cross-device link");
        let url = io::Error::other("see: https://docs.rs/y");
        assert!(!io_error(&url).contains("https"));
    }
}

//! The audit log (`rexec::audit`): who asked, and the one way an audit
//! event starts with that, for every kind of request (exec, copy, job).
//! What each request adds after it is its own module's business.

/// Who asks, as the session identified them.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Where from.
    pub peer: crate::peer::Peer,
    /// The client's name.
    pub name: String,
    /// The client's key.
    pub fingerprint: rexec_protocol::Fingerprint,
}

/// One audit event: who asked (a [`Caller`]), then the request's own
/// fields and the message, as for `tracing::event!`.
macro_rules! audit {
    ($level:expr, $caller:expr, $($rest:tt)*) => {
        tracing::event!(
            target: "rexec::audit",
            $level,
            peer = %$caller.peer,
            client = $caller.name.as_str(),
            fingerprint = %$caller.fingerprint,
            $($rest)*
        )
    };
}
pub(crate) use audit;

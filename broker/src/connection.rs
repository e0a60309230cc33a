//! How the connection to the broker stands: the carrier publishes it,
//! each stream watches it (a stream over a connection that went down is
//! lost), and the agent logs it and shows it in `systemctl status`.

/// Whether we are connected to the broker, for logs and `systemctl status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionState {
    /// Connected now.
    pub connected: bool,
    /// How many times the connection went down since it was made.
    pub disconnects: u64,
    /// The last thing the broker or the connection complained about, in our
    /// words (wrong credentials, a refused subscription, …).
    pub last_error: Option<String>,
    /// Subscriptions or publications the broker refused so far.
    pub permission_violations: u64,
    /// The subject of the last refusal.
    pub last_refused_subject: Option<String>,
    /// Probes of another agent process under the name we serve that
    /// reached us: two agents serve one name (or someone sends probes in
    /// its name; the agent probes itself to tell).
    pub name_clashes: u64,
}

//! `ctl keygen` and `ctl id`: our identity, created or shown.

use rexec_protocol::Identity;

use super::{Failure, load_identity, plain, print_out};
use crate::config::ConfigDir;

/// `ctl keygen`: creates our identity and prints its fingerprint.
pub fn keygen(config: &ConfigDir) -> Result<u8, Failure> {
    let identity = Identity::create(&config.identity()).map_err(|e| plain(e.into()))?;
    say!("created client identity in {}", config.path().display());
    print_out(&format!("{}\n", identity.fingerprint))
}

/// `ctl id`: prints our fingerprint.
pub fn id(config: &ConfigDir) -> Result<u8, Failure> {
    let identity = load_identity(config)?;
    print_out(&format!("{}\n", identity.fingerprint))
}

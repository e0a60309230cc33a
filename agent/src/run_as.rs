//! As whom a request runs, and becoming them.
//!
//! [`resolve_user`] applies the run-as rules to a client's request, the
//! same for a command and a copy. A command becomes its user in its own
//! process, between fork and exec ([`drop_privileges`]); a copy's file work
//! runs on a thread of the agent that takes the user's file-system
//! identity and gives up its capabilities ([`take_identity`]), both per
//! thread, so the agent's other threads keep theirs.

use std::ffi::CString;

use nix::unistd::{Gid, Uid, User, geteuid};
use rexec_protocol::copy::CopyError;
use rexec_protocol::{ErrorKind, ErrorReport};

use crate::config::AgentSettings;

/// Who asked for an exec, as the session identified them.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// The client's name from the authorized clients file.
    pub name: &'a str,
}

/// The user a command or copy runs as, resolved before it starts.
pub struct RunAs {
    /// Who.
    pub user: User,
    /// Their supplementary groups; `None` when we stay who we are.
    pub switch: Option<Vec<Gid>>,
}

/// Decides whom a request runs as.
///
/// A client with an entry in the run-as rules runs only as a user listed
/// there (`*`: any user), by default the first one listed; the entry binds
/// for the agent's own user too, so a rule confines as well as grants. A
/// client without an entry runs as the agent's own user only. Running as
/// anyone but the agent's own user needs an agent running as root.
pub fn resolve_user(
    wanted: Option<&str>,
    requester: Requester<'_>,
    settings: &AgentSettings,
) -> Result<RunAs, ErrorReport> {
    let denied = |message: String| ErrorReport::new(ErrorKind::PermissionDenied, message);
    let own = User::from_uid(geteuid())
        .ok()
        .flatten()
        .ok_or_else(|| ErrorReport::new(ErrorKind::Internal, "the agent's own user is unknown"))?;
    let policy = &settings.run_as;
    let listed = policy.rule(requester.name).is_some();
    let target = wanted
        .or_else(|| policy.default_user(requester.name))
        .unwrap_or(&own.name)
        .to_owned();
    let not_root = || {
        denied(format!(
            "cannot run as user {target:?}: this agent runs as {:?}, not root, so only as {:?}",
            own.name, own.name
        ))
    };
    let refused = || {
        denied(format!(
            "client {:?} may not run commands as {target:?} on this agent (see run_as in its config)",
            requester.name
        ))
    };
    if listed && !policy.allows(requester.name, &target) {
        return Err(refused());
    }
    if target == own.name {
        return Ok(RunAs {
            user: own,
            switch: None,
        });
    }
    if !own.uid.is_root() {
        return Err(not_root());
    }
    if !listed {
        return Err(refused());
    }
    let user = User::from_name(&target).ok().flatten().ok_or_else(|| {
        ErrorReport::new(ErrorKind::BadRequest, format!("no such user: {target}"))
    })?;
    let name = CString::new(user.name.clone())
        .map_err(|_| ErrorReport::new(ErrorKind::BadRequest, "user name contains a NUL byte"))?;
    let groups = nix::unistd::getgrouplist(&name, user.gid).map_err(|e| {
        ErrorReport::new(
            ErrorKind::Internal,
            format!("cannot list the groups of {target}: {e}"),
        )
    })?;
    Ok(RunAs {
        user,
        switch: Some(groups),
    })
}

/// In the child: becomes `uid` with primary group `gid` and `groups`.
/// Groups first, while we are still allowed to set them.
pub fn drop_privileges(groups: &[Gid], gid: Gid, uid: Uid) -> std::io::Result<()> {
    nix::unistd::setgroups(groups).map_err(std::io::Error::from)?;
    nix::unistd::setgid(gid).map_err(std::io::Error::from)?;
    nix::unistd::setuid(uid).map_err(std::io::Error::from)
}

/// The file-system identity a copy's worker thread takes.
#[derive(Debug, Clone)]
pub struct FsIdentity {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

/// On the worker thread, before any file work: takes `identity` for this
/// thread's file access only, then gives up every capability of this
/// thread. The real, effective and saved ids stay the agent's: a thread
/// whose ids were the user's could be signalled and have its limits set by
/// that user's processes (`kill`, `prlimit` on its thread id), and those
/// act on the whole agent. The file-system ids are what the kernel checks
/// for file access; `/proc`, where the effective id matters too, is out of
/// a copy's reach (`Reach::OutsideProc`). With its real ids root's, the
/// thread could set its file-system ids back; nothing in a copy does, and
/// no code of the user's runs there. glibc's `setgroups` would change
/// every thread of the agent, so the groups are set with the raw system
/// call; the file-system ids and `capset` are per thread by nature.
pub fn take_identity(identity: Option<&FsIdentity>) -> Result<(), CopyError> {
    let Some(identity) = identity else {
        return Ok(());
    };
    let failed = |what: &str| {
        CopyError::new(
            ErrorKind::Internal,
            format!(
                "cannot take the file-system identity of uid {}: {what}: {}",
                identity.uid,
                std::io::Error::last_os_error()
            ),
        )
    };
    let groups: Vec<nix::libc::gid_t> = identity.groups.iter().map(|g| g.as_raw()).collect();
    // SAFETY: the pointer and length describe `groups`, alive for the call;
    // the system call changes this thread's credentials only.
    let status =
        unsafe { nix::libc::syscall(nix::libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if status != 0 {
        return Err(failed("setgroups"));
    }
    nix::unistd::setfsgid(identity.gid);
    nix::unistd::setfsuid(identity.uid);
    // Both calls report the previous value; asking confirms the change.
    let no_change = Gid::from_raw(u32::MAX);
    if nix::unistd::setfsgid(no_change) != identity.gid {
        return Err(failed("setfsgid"));
    }
    if nix::unistd::setfsuid(Uid::from_raw(u32::MAX)) != identity.uid {
        return Err(failed("setfsuid"));
    }
    drop_capabilities().map_err(|e| {
        CopyError::new(
            ErrorKind::Internal,
            format!("cannot give up the agent's capabilities for the copy: {e}"),
        )
    })
}

/// Clears this thread's effective, permitted and inheritable capability
/// sets, for good: what the thread does next it does with the file-system
/// identity alone, as the user would.
fn drop_capabilities() -> std::io::Result<()> {
    use rustix::thread::{CapabilitySet, CapabilitySets, set_capabilities};
    let none = CapabilitySets {
        effective: CapabilitySet::empty(),
        permitted: CapabilitySet::empty(),
        inheritable: CapabilitySet::empty(),
    };
    set_capabilities(None, none)?;
    Ok(())
}

impl RunAs {
    /// The user's name, and the identity a copy's thread takes to act as
    /// them; `None` when the agent stays who it is.
    pub fn fs_identity(self) -> (String, Option<FsIdentity>) {
        let RunAs { user, switch } = self;
        let identity = switch.map(|groups| FsIdentity {
            uid: user.uid,
            gid: user.gid,
            groups,
        });
        (user.name, identity)
    }
}

impl FsIdentity {
    /// The user id the copy acts as.
    pub fn uid(&self) -> Uid {
        self.uid
    }
}

//! Detached jobs on the wire: the request that starts one
//! ([`DetachRequest`]), the requests about jobs already started
//! ([`JobRequest`]), and what the agent says of a job ([`JobSummary`],
//! [`JobStream`]).
//!
//! A job's id is chosen by the client, so that one `ctl exec --detach` over
//! many hosts names the same job on each; it is 128 random bits in lower
//! case hex, and anything else fails to decode.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exec::{ExecRequest, ExitStatus};

/// Length of a job id in hex digits (128 bits).
pub const JOB_ID_LEN: usize = 32;

/// A job's id: [`JOB_ID_LEN`] lower case hex digits, safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

/// A string that is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a job id (32 hex digits): {0:?}")]
pub struct BadJobId(pub String);

impl JobId {
    /// The id of 16 random bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> JobId {
        JobId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for JobId {
    type Err = BadJobId;

    fn from_str(text: &str) -> Result<JobId, BadJobId> {
        let valid = text.len() == JOB_ID_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid {
            Ok(JobId(text.to_owned()))
        } else {
            // Quoted in messages: cut, so that a hostile one stays short.
            Err(BadJobId(text.chars().take(64).collect()))
        }
    }
}

impl TryFrom<String> for JobId {
    type Error = BadJobId;

    fn try_from(text: String) -> Result<JobId, BadJobId> {
        text.parse()
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Start `exec` as a detached job named `id`; the agent answers with
/// [`crate::AgentMessage::Job`] once it runs, or an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachRequest {
    /// The job's id, the same on every host of one run.
    pub id: JobId,
    /// The command; `stdin` and `pty` must be off.
    pub exec: ExecRequest,
}

/// A request about jobs already started by this client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum JobRequest {
    /// Every job this client may see: answered by [`crate::AgentMessage::Jobs`].
    List,
    /// The job's output as kept: [`crate::AgentMessage::JobStream`], then
    /// `Stdout`/`Stderr` chunks, then [`crate::AgentMessage::Job`] last.
    /// With `follow`, output comes live until the job ends.
    Output {
        /// Which job.
        id: JobId,
        /// Stay until the job ends, sending output as it comes.
        follow: bool,
    },
    /// [`crate::AgentMessage::JobStream`], keepalives while the job runs,
    /// then [`crate::AgentMessage::Job`] once it has ended.
    Wait {
        /// Which job.
        id: JobId,
    },
    /// SIGTERM to the job's process group, SIGKILL after the kill grace;
    /// answered by [`crate::AgentMessage::Job`] once it has ended.
    Kill {
        /// Which job.
        id: JobId,
    },
    /// Remove an ended job's record and output; answered by
    /// [`crate::AgentMessage::Job`] with what was removed.
    Forget {
        /// Which job.
        id: JobId,
    },
}

/// The first answer to an output or wait request; sent again, with the
/// new places, when the oldest output was dropped (`max_job_output`)
/// while the stream ran, so that the client knows the next bytes do not
/// follow on from the last ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStream {
    /// How often the agent sends a keepalive while it has nothing else to
    /// send; `None` when it sends none.
    pub keepalive: Option<Duration>,
    /// Where the stdout that follows starts, counted from the job's first
    /// byte: the bytes before it that were not sent are dropped.
    pub stdout_dropped: u64,
    /// Where the stderr that follows starts, likewise.
    pub stderr_dropped: u64,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum JobState {
    /// Its command still runs.
    Running,
    /// Its command ended so.
    Ended(ExitStatus),
    /// Whatever ran it vanished without recording an end (the machine
    /// restarted, or it was killed by hand).
    Lost,
    /// Its record on the agent's disk cannot be read; `note` says why.
    Damaged,
}

/// What the agent knows of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    /// The job's id.
    pub id: JobId,
    /// Where it stands.
    pub state: JobState,
    /// The command line.
    pub command: String,
    /// The name of the client that started it.
    pub owner: String,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When it ended, in milliseconds since the Unix epoch.
    pub ended_ms: Option<u64>,
    /// Bytes the command wrote to stdout, kept or not.
    pub stdout_bytes: u64,
    /// Bytes the command wrote to stderr, kept or not.
    pub stderr_bytes: u64,
    /// Of those, the oldest bytes of stdout dropped for the output cap.
    pub stdout_dropped: u64,
    /// Of those, the oldest bytes of stderr dropped for the output cap.
    pub stderr_dropped: u64,
    /// Anything else the user should know: output lost to a full disk
    /// (and from which byte), why the record is damaged.
    pub note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_32_lower_hex_digits_and_nothing_else() {
        let id = JobId::from_bytes([0xab; 16]);
        assert_eq!(id.as_str().len(), JOB_ID_LEN);
        assert_eq!(id.as_str().parse::<JobId>().unwrap(), id);
        for bad in [
            "",
            "../../etc/passwd",
            "ABABABABABABABABABABABABABABABAB",
            "abababababababababababababababa",
            "abababababababababababababababab0",
            "ababababababababababababababab/.",
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad}");
        }
    }
}

//! `ctl job …`: the clap definitions of the commands about detached jobs.

use std::time::Duration;

use rexec_protocol::JobId;

use super::{Exclude, Reach, TARGETS_HELP};

pub const JOB_HELP: &str = "\
A job is started with ctl exec --detach TARGETS COMMAND, which prints its id
(the same on every host). It runs on each agent without ctl, and goes on when
ctl, the network or the agent itself goes away; its output and exit status
stay on the agent (each stream capped, the oldest bytes dropped past the cap)
until ctl job forget, or the agent's retention, removes them.
Only the client key that started a job sees it, unless the agent names this
client an admin; any other job is \"no such job\".
wait and output --follow ask again an agent that goes away once it has
answered (a restart, a dropped connection), for up to --reconnect-for.
Every host named is asked, whatever fails: there is no --max-failures here,
as a kill that stopped after a few failures would leave the job running.
Exit status of output and wait: the job's, as ctl exec gives it (several
hosts: the largest; a lost or damaged job counts as 255); output of a job that
still runs, without --follow: 0.";

/// `ctl job`.
#[derive(Debug, clap::Subcommand)]
pub enum JobAction {
    /// Per host, each job: id, state (running, exited N, killed by signal N,
    /// timed out, lost), start time, output bytes, command.
    #[command(after_help = TARGETS_HELP)]
    List {
        /// One JSON object per job per line (a host that failed: one
        /// object with its error).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        reach: Reach,
        #[command(flatten)]
        exclude: Exclude,
        /// The target list.
        #[arg(value_name = "TARGETS")]
        targets: String,
    },
    /// The job's output as kept so far: stdout to stdout, stderr to stderr
    /// (several hosts: lines prefixed with the host).
    Output {
        /// Stay until the job ends, printing output as it comes, then exit
        /// with its status.
        #[arg(long)]
        follow: bool,
        /// With --follow: how long an agent that goes away (it restarts,
        /// the network drops) is asked again before ctl gives up on the
        /// host; 0 gives up at once.
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = super::parse_duration, requires = "follow")]
        reconnect_for: Duration,
        #[command(flatten)]
        job: JobTarget,
    },
    /// Wait for the job to end, without its output; exit with its status.
    Wait {
        /// How long an agent that goes away (it restarts, the network
        /// drops) is asked again before ctl gives up on the host; 0 gives
        /// up at once.
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = super::parse_duration)]
        reconnect_for: Duration,
        #[command(flatten)]
        job: JobTarget,
    },
    /// End the job: SIGTERM to its process group, SIGKILL after the
    /// agent's kill grace.
    Kill {
        #[command(flatten)]
        job: JobTarget,
    },
    /// Remove an ended job's record and output from the agent now.
    Forget {
        #[command(flatten)]
        job: JobTarget,
    },
}

/// A job on a target list.
#[derive(Debug, clap::Args)]
pub struct JobTarget {
    #[command(flatten)]
    pub reach: Reach,
    #[command(flatten)]
    pub exclude: Exclude,
    /// The target list.
    #[arg(value_name = "TARGETS")]
    pub targets: String,
    /// The job's id, as ctl exec --detach printed it.
    #[arg(value_name = "ID", value_parser = parse_job_id)]
    pub id: JobId,
}

fn parse_job_id(text: &str) -> Result<JobId, String> {
    text.parse().map_err(|_| {
        format!("{text:?} is not a job id (32 hex digits, as ctl exec --detach prints)")
    })
}

//! The README's examples, run as written against real agents on loopback.
//!
//! The runner reads README.md's fenced code blocks: in `console` and
//! `text` blocks each `$ ` line is a command and the lines up to the next
//! one are what it shows; in `sh` blocks (and blocks without a language)
//! every line whose command is `ctl` or `rexec-agent` (also after `sudo`,
//! `time` or a `|`) is a command, its `# comment` left off. Each command
//! runs through `bash -o pipefail -c` as written, with only these changes
//! ([`SUBSTITUTIONS`]): `sudo` goes (the tests run as root, and this
//! machine has no sudo); host names and placeholders (`labpc07`, `HOST`,
//! `node[01-20]`, the quick start's `127.0.0.1:41975`) become two test
//! agents, 127.0.0.2 and 127.0.0.3, whose ports and the group `@lab` come
//! from an inventory (`REXEC_INVENTORY`); `SHA256:...` becomes the client's
//! fingerprint; remote paths of the lab machine (`/etc/app/`, `/srv/`, …)
//! move under a temporary directory. The config directories come from
//! `REXEC_CONFIG_DIR`, `REXEC_AGENT_DIR` and `REXEC_AGENT_CONFIG`, so
//! nothing outside the test's temporary directory is touched.
//!
//! Every command is run unless [`NOT_RUN`] lists it with its reason; a
//! command the README gains therefore runs, and fails the test if it
//! cannot run here, until it is listed. It must exit 0 unless
//! [`EXIT_CODES`] says what the README implies instead, and print every
//! line the README shows for it (exactly those lines when the README shows
//! no `…`), unless [`OUTPUT_NOT_COMPARED`] says why not. A command that
//! ends in `; echo $?` must print the status shown on the last line, and
//! the files a copy's comment promises ([`FILES_MADE`]) must be there.
//! [`KNOWN_FAILURES`] lists examples that fail today for a defect being
//! fixed elsewhere: they run, and the test fails once they pass, so that
//! the mark is removed. An entry of any table that names no command of
//! the README fails the test too.
//!
//! The block that starts with `ctl keygen` (the README's story from a
//! fresh machine: init, keygen, authorize, run, first contact) runs in a
//! world of its own, from nothing, and its `rexec-agent run` is the agent
//! its `ctl exec` reaches. Every other command runs in a prepared world
//! whose identities and agent the runner made the same way.
//!
//! A small runner of our own rather than `trycmd`: trycmd runs one binary
//! per case with literal arguments and compares whole outputs, while the
//! README's examples are shell lines (pipes, `$?`, `time`), name hosts that
//! must be mapped to test agents, and show shortened, machine-specific
//! output. Here they stay exactly as written in the README, with no copy
//! to keep in step.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{self, Agent};

/// README commands the runner does not run, each with the reason.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "ctl exec HOST[:PORT] 'COMMAND LINE'",
        "a template: HOST[:PORT] and COMMAND LINE are placeholders, and every concrete form follows it",
    ),
    (
        "ctl exec --timeout 30s HOST 'make -j8'",
        "builds a project this machine does not have; --timeout's exit 124 is run by exec:: and process:: tests",
    ),
];

/// README sections whose commands another test runs, as written, in a
/// world this runner does not have, with that test's name.
pub(crate) const SECTIONS_RUN_ELSEWHERE: &[(&str, &str)] = &[(
    "### Broker mode: ctl",
    "broker_ctl::the_readme_broker_examples_run_as_written, against a nats-server and agents on it",
)];

/// Commands the README implies do not exit 0, with the status.
const EXIT_CODES: &[(&str, i32)] = &[
    (
        "ctl exec 127.0.0.1:41975 'echo out; echo err >&2; exit 3'",
        3,
    ),
    ("ctl hosts 'node[1-x]'", 255),
];

/// Commands whose shown output is not compared, each with the reason.
const OUTPUT_NOT_COMPARED: &[(&str, &str)] = &[
    (
        "ctl exec labpc07 'df -h /; exit 3'; echo $?",
        "df's figures are the README author's disk (the status on the last line is compared)",
    ),
    (
        "ctl exec 127.0.0.1:41975 'echo \"hello from $(hostname) as $USER\"; ls /'",
        "the quick start's transcript: host name, user, fingerprint and paths of another machine",
    ),
    (
        "ctl exec 127.0.0.1:41975 'echo out; echo err >&2; exit 3'",
        "\"exit status: 3\" is printed by scripts/quickstart.sh, not by ctl (the status is checked)",
    ),
    (
        "time ctl exec 127.0.0.1:41975 \"head -c 1G /dev/urandom\" | sha256sum",
        "random bytes and a timing",
    ),
    (
        "ctl ping @lab",
        "round-trip times and host names of the README's lab",
    ),
];

/// Examples that fail today for a defect being fixed on another branch.
/// Remove an entry once its fix is merged: the test fails while a marked
/// example passes.
const KNOWN_FAILURES: &[(&str, &str)] = &[];

/// Files a command's README comment says it makes, relative to the
/// world's directory (`work/` is the workstation's current directory,
/// `remote/` the lab machine's `/`).
const FILES_MADE: &[(&str, &[&str])] = &[
    (
        "ctl cp deploy.sh @lab:/usr/local/bin/",
        &["remote/usr/local/bin/deploy.sh"],
    ),
    (
        "ctl cp -r ./site node[01-20]:/srv/",
        &["remote/srv/site/index.html", "remote/srv/site/css/main.css"],
    ),
    (
        "ctl cp app.conf web1:/etc/app/app.conf",
        &["remote/etc/app/app.conf"],
    ),
    (
        "ctl cp @lab:/var/log/syslog ./logs/",
        &["work/logs/127.0.0.2/syslog", "work/logs/127.0.0.3/syslog"],
    ),
    (
        "ctl cp -r labpc07:/etc/rexec ./backup/",
        &["work/backup/rexec/agent.toml"],
    ),
    (
        "ctl cp --json big.iso @lab:/data/",
        &["remote/data/big.iso"],
    ),
];

/// Commands that start a daemon: run in the background, waited for until
/// they listen, stopped at the end.
const DAEMONS: &[&str] = &["sudo rexec-agent run"];

/// Items of the README's table of target forms that are placeholders
/// rather than targets, and are therefore not given to `ctl hosts`.
const FORMS_NOT_RUN: &[(&str, &str)] = &[
    ("host:port", "placeholder port"),
    ("[v6addr]:port", "placeholder address and port"),
    ("@name", "placeholder group name"),
    ("!node07", "an exclusion alone expands to no host"),
    ("!@name", "placeholder group name"),
];

/// The two agents' addresses: `labpc07`, `HOST` and the quick start's
/// agent are the first, `web1` the second, `node[01-20]` and `@lab` both.
const FIRST: &str = "127.0.0.2";
const SECOND: &str = "127.0.0.3";

/// What the runner changes in a README command before running it, in
/// this order (see the module's docs). Remote paths are in [`REMOTE_PATHS`].
const SUBSTITUTIONS: &[(&str, &str)] = &[
    ("sudo ", ""),
    ("127.0.0.1:41975", FIRST),
    ("HOST[:PORT]", FIRST),
    ("HOST", FIRST),
    ("labpc07", FIRST),
    ("web1", SECOND),
    ("node[01-20]", "127.0.0.[2-3]"),
];

/// Paths on the README's lab machines, which on this machine live under
/// the world's `remote` directory.
const REMOTE_PATHS: &[&str] = &[
    "/usr/local/bin/",
    "/srv/",
    "/etc/app/",
    "/var/log/syslog",
    "/etc/rexec",
    "/data/",
];

/// The longest one command may take (the 1 GiB examples included).
const COMMAND_DEADLINE: Duration = Duration::from_secs(180);

/// One command from the README, with what the README shows it printing.
#[derive(Debug, Clone)]
pub(crate) struct Example {
    /// Line in README.md, counted from 1.
    pub line: usize,
    /// Which fenced block it is in.
    pub block: usize,
    /// The command as written, without its comment.
    pub text: String,
    /// The lines shown after a `$ ` command; empty in `sh` blocks.
    pub shown: Vec<String>,
}

/// Cuts a trailing `# comment` that is outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() => return line[..i].trim_end(),
            _ => {}
        }
        previous = c;
    }
    line.trim_end()
}

/// Whether some simple command of `line` runs `ctl` or `rexec-agent`.
fn runs_ours(line: &str) -> bool {
    line.split(['|', ';', '&']).any(|segment| {
        let first = segment
            .split_whitespace()
            .find(|w| !matches!(*w, "sudo" | "time") && !w.contains('='));
        matches!(first, Some("ctl" | "rexec-agent"))
    })
}

/// The README's commands, in order.
pub(crate) fn examples(readme: &str) -> Vec<Example> {
    let mut examples = Vec::new();
    let mut block: Option<(usize, String)> = None;
    let mut blocks = 0;
    for (i, raw) in readme.lines().enumerate() {
        let line = raw.trim_start();
        if let Some(lang) = line.strip_prefix("```") {
            block = match block {
                Some(_) => None,
                None => {
                    blocks += 1;
                    Some((blocks, lang.trim().to_owned()))
                }
            };
            continue;
        }
        let Some((index, lang)) = &block else {
            continue;
        };
        match lang.as_str() {
            "console" | "text" => {
                if let Some(command) = line.strip_prefix("$ ") {
                    examples.push(Example {
                        line: i + 1,
                        block: *index,
                        text: command.trim_end().to_owned(),
                        shown: Vec::new(),
                    });
                } else if let Some(last) = examples.last_mut().filter(|e| e.block == *index) {
                    last.shown.push(raw.trim_end().to_owned());
                }
            }
            "sh" | "bash" | "shell" | "" => {
                let command = strip_comment(line);
                if runs_ours(command) {
                    examples.push(Example {
                        line: i + 1,
                        block: *index,
                        text: command.to_owned(),
                        shown: Vec::new(),
                    });
                }
            }
            _ => {}
        }
    }
    examples
}

/// Everything one set of machines needs: an agent identity and its
/// directory, a client identity, an agent listening on 127.0.0.2 and
/// 127.0.0.3, an inventory, the lab machine's paths and the
/// workstation's current directory with the files the examples copy.
struct World {
    // Before `root`: fields drop in order, and the agent stops before its
    // directory goes.
    agent: Option<Agent>,
    root: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let world = World {
            agent: None,
            root: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::write(
            world.path("agent.toml"),
            format!("listen = [\"{FIRST}:0\", \"{SECOND}:0\"]\nkill_grace = \"500ms\"\n"),
        )
        .expect("agent config");
        let remote = world.path("remote");
        for dir in [
            "usr/local/bin",
            "srv/app",
            "etc/app",
            "var/log",
            "etc/rexec",
            "data",
        ] {
            std::fs::create_dir_all(remote.join(dir)).expect("remote dirs");
        }
        std::fs::write(remote.join("srv/app/index.html"), "hello\n").expect("file");
        std::fs::write(remote.join("var/log/syslog"), "a line of log\n").expect("file");
        std::fs::write(remote.join("etc/rexec/agent.toml"), "# empty\n").expect("file");
        let work = world.path("work");
        for dir in ["site/css", "logs", "backup"] {
            std::fs::create_dir_all(work.join(dir)).expect("work dirs");
        }
        std::fs::write(work.join("deploy.sh"), "#!/bin/sh\necho deployed\n").expect("file");
        std::fs::write(work.join("site/index.html"), "<p>hi</p>\n").expect("file");
        std::fs::write(work.join("site/css/main.css"), "p {}\n").expect("file");
        std::os::unix::fs::symlink("index.html", work.join("site/home.html")).expect("link");
        std::fs::write(work.join("app.conf"), "key = value\n").expect("file");
        std::fs::write(work.join("big.iso"), util::random_bytes(3 << 20, 7)).expect("file");
        world
    }

    /// A world set up the way the README's identity story does it.
    fn prepared() -> World {
        let mut world = World::new();
        for setup in ["rexec-agent init", "ctl keygen"] {
            let out = world.run(setup);
            assert!(out.0 == Some(0), "{setup}: {}", out.2);
        }
        let fingerprint = world.client_fingerprint();
        let out = world.run(&format!(
            "rexec-agent authorize {fingerprint} --name tester"
        ));
        assert!(out.0 == Some(0), "authorize: {}", out.2);
        world.start_daemon("rexec-agent run");
        world
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn command(&self, text: &str) -> Command {
        let bin_dir = util::bin("ctl").parent().expect("bin dir").to_path_buf();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![bin_dir];
        dirs.extend(std::env::split_paths(&path));
        let mut cmd = Command::new("bash");
        cmd.args(["-o", "pipefail", "-c", text])
            .current_dir(self.path("work"))
            .env("PATH", std::env::join_paths(dirs).expect("PATH"))
            .env("REXEC_CONFIG_DIR", self.path("ctl"))
            .env("REXEC_INVENTORY", self.path("hosts.toml"))
            .env("REXEC_AGENT_DIR", self.path("agent"))
            .env("REXEC_AGENT_CONFIG", self.path("agent.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `text` to its end (within [`COMMAND_DEADLINE`]): exit code,
    /// stdout, stderr.
    fn run(&self, text: &str) -> (Option<i32>, String, String) {
        let mut child = self
            .command(text)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash");
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                String::from_utf8_lossy(&bytes).into_owned()
            })
        };
        let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
        let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
        let mut status = None;
        let ended = util::wait_until(COMMAND_DEADLINE, || {
            status = child.try_wait().expect("wait");
            status.is_some()
        });
        if !ended {
            let _ = child.kill();
            let _ = child.wait();
        }
        let stdout = stdout.join().expect("stdout");
        let mut stderr = stderr.join().expect("stderr");
        if !ended {
            stderr.push_str(&format!("(killed after {COMMAND_DEADLINE:?})"));
        }
        (status.and_then(|s| s.code()), stdout, stderr)
    }

    fn client_fingerprint(&self) -> String {
        let (code, out, err) = self.run("ctl id");
        assert_eq!(code, Some(0), "ctl id: {err}");
        out.trim().to_owned()
    }

    /// Starts `text` (an agent) in the background, waits until it listens
    /// on both addresses, and writes the inventory that leads there.
    fn start_daemon(&mut self, text: &str) {
        let mut cmd = self.command(&format!("exec {text}"));
        cmd.stdout(Stdio::null());
        let agent = Agent::spawn(cmd);
        let mut inventory = String::from("[groups]\nlab = \"127.0.0.[2-3]\"\n");
        for host in [FIRST, SECOND] {
            let line = agent
                .wait_for_log(&format!("listening on {host}:"))
                .unwrap_or_else(|| panic!("{text} did not listen on {host}:\n{}", agent.log()));
            let port = line
                .split(&format!("listening on {host}:"))
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .expect("port in the log");
            inventory.push_str(&format!("\n[hosts.\"{host}\"]\nport = {port}\n"));
        }
        std::fs::write(self.path("hosts.toml"), inventory).expect("inventory");
        self.agent = Some(agent);
    }

    /// `text` with the substitutions of the module's docs.
    fn substitute(&self, text: &str) -> String {
        let mut out = text.to_owned();
        if out.contains("SHA256:...") {
            out = out.replace("SHA256:...", &self.client_fingerprint());
        }
        for (from, to) in SUBSTITUTIONS {
            out = replace_words(&out, from, to);
        }
        let remote = self.path("remote");
        let remote = remote.to_str().expect("utf-8 path");
        for path in REMOTE_PATHS {
            out = out.replace(path, &format!("{remote}{path}"));
        }
        out
    }
}

/// `text` with each `from` that is not part of a longer word (`HOST`, but
/// not the `HOST` of `$HOSTNAME`) replaced by `to`.
fn replace_words(text: &str, from: &str, to: &str) -> String {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        let before = rest[..at].chars().last().or_else(|| out.chars().last());
        let after = rest[at + from.len()..].chars().next();
        out.push_str(&rest[..at]);
        let joins_before = word(before) && from.starts_with(|c: char| c.is_alphanumeric());
        let joins_after = word(after) && from.ends_with(|c: char| c.is_alphanumeric());
        out.push_str(if joins_before || joins_after {
            from
        } else {
            to
        });
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

/// The commands of the README's section that starts with `heading`.
pub(crate) fn section_examples(readme: &str, heading: &str) -> Vec<Example> {
    let Some(start) = readme.lines().position(|l| l == heading) else {
        return Vec::new();
    };
    let end = readme
        .lines()
        .enumerate()
        .skip(start + 1)
        .find(|(_, l)| l.starts_with("## ") || l.starts_with("### "))
        .map_or(usize::MAX, |(i, _)| i);
    examples(readme)
        .into_iter()
        .filter(|e| e.line > start && e.line <= end)
        .collect()
}

/// Why `example`'s result is not what the README implies, if it is not.
pub(crate) fn check(
    example: &Example,
    code: Option<i32>,
    stdout: &str,
    stderr: &str,
) -> Option<String> {
    let want = lookup(EXIT_CODES, &example.text).copied().unwrap_or(0);
    if code != Some(want) {
        return Some(format!("exit {code:?}, the README implies {want}"));
    }
    if example.text.ends_with("; echo $?") {
        let status = example.shown.last().map(String::as_str);
        if stdout.lines().last() != status {
            return Some(format!("the last line is not the status {status:?} shown"));
        }
    }
    if example.shown.is_empty() || lookup(OUTPUT_NOT_COMPARED, &example.text).is_some() {
        return None;
    }
    let printed: Vec<&str> = stdout.lines().chain(stderr.lines()).collect();
    let shown: Vec<&str> = example
        .shown
        .iter()
        .map(String::as_str)
        .filter(|l| !l.trim().is_empty())
        .collect();
    if let Some(missing) = shown
        .iter()
        .find(|l| l.trim() != "…" && !printed.contains(l))
    {
        return Some(format!(
            "the README shows {missing:?}, which is not printed"
        ));
    }
    if !shown.iter().any(|l| l.trim() == "…") && printed.len() != shown.len() {
        return Some(format!(
            "the README shows {} lines, ctl printed {}",
            shown.len(),
            printed.len()
        ));
    }
    None
}

#[test]
fn placeholders_are_replaced_only_as_whole_words() {
    assert_eq!(
        replace_words("ctl exec HOST x", "HOST", "h"),
        "ctl exec h x"
    );
    assert_eq!(
        replace_words("echo $HOSTNAME HOST", "HOST", "h"),
        "echo $HOSTNAME h"
    );
    assert_eq!(replace_words("HOST[:PORT]", "HOST[:PORT]", "h"), "h");
    assert_eq!(
        replace_words("sudo rexec-agent", "sudo ", ""),
        "rexec-agent"
    );
    assert_eq!(replace_words("pseudo x", "sudo ", ""), "pseudo x");
}

fn lookup<'a, T>(table: &'a [(&str, T)], text: &str) -> Option<&'a T> {
    table.iter().find(|(t, _)| *t == text).map(|(_, v)| v)
}

/// Every command of the README's code blocks runs as written (after the
/// substitutions) and does what the README says, or is listed with why not.
#[test]
fn the_readme_examples_run_as_written() {
    let readme = std::fs::read_to_string(util::repo_root().join("README.md")).expect("README");
    let elsewhere: Vec<usize> = SECTIONS_RUN_ELSEWHERE
        .iter()
        .flat_map(|(heading, _)| section_examples(&readme, heading))
        .map(|e| e.line)
        .collect();
    let examples: Vec<Example> = examples(&readme)
        .into_iter()
        .filter(|e| !elsewhere.contains(&e.line))
        .collect();
    assert!(
        examples.len() >= 20,
        "only {} examples found",
        examples.len()
    );

    // Each table names commands that are in the README.
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let listed = NOT_RUN
        .iter()
        .map(|e| e.0)
        .chain(EXIT_CODES.iter().map(|e| e.0))
        .chain(OUTPUT_NOT_COMPARED.iter().map(|e| e.0))
        .chain(KNOWN_FAILURES.iter().map(|e| e.0))
        .chain(FILES_MADE.iter().map(|e| e.0))
        .chain(DAEMONS.iter().copied());
    let stale: Vec<&str> = listed.filter(|t| !texts.contains(t)).collect();
    assert!(
        stale.is_empty(),
        "listed in tests/readme.rs but no longer in the README: {stale:?}"
    );

    let story = examples
        .iter()
        .find(|e| e.text == "ctl keygen")
        .map(|e| e.block)
        .expect("the README's identity story (ctl keygen)");
    let mut fresh = World::new();
    let mut prepared = World::prepared();
    let mut failures = Vec::new();
    let mut now_passing = Vec::new();
    let mut ran = 0;
    for example in &examples {
        if lookup(NOT_RUN, &example.text).is_some() {
            continue;
        }
        let world = if example.block == story {
            &mut fresh
        } else {
            &mut prepared
        };
        let text = world.substitute(&example.text);
        ran += 1;
        if DAEMONS.contains(&example.text.as_str()) {
            world.start_daemon(&text);
            continue;
        }
        let (code, stdout, stderr) = world.run(&text);
        eprintln!("README.md:{}: exit {code:?}: {text}", example.line);
        let verdict = check(example, code, &stdout, &stderr).or_else(|| {
            lookup(FILES_MADE, &example.text)
                .and_then(|files| files.iter().find(|f| !world.path(f).is_file()))
                .map(|missing| format!("{missing} was not made"))
        });
        match (verdict, lookup(KNOWN_FAILURES, &example.text)) {
            (None, Some(_)) => now_passing.push(format!(
                "README.md:{}: {} now passes: remove it from KNOWN_FAILURES",
                example.line, example.text
            )),
            (Some(why), None) => failures.push(format!(
                "README.md:{}: {}\n    ran: {text}\n    {why}\n    stdout: {}\n    stderr: {}",
                example.line,
                example.text,
                tail(&stdout),
                tail(&stderr)
            )),
            (Some(why), Some(known)) => {
                eprintln!(
                    "README.md:{}: known failure ({known}): {why}: {}",
                    example.line,
                    tail(&stderr)
                );
            }
            (None, None) => {}
        }
    }
    assert!(ran >= 20, "only {ran} examples ran");
    assert!(
        failures.is_empty() && now_passing.is_empty(),
        "{}",
        failures
            .iter()
            .chain(&now_passing)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The last few hundred characters of an output, for messages.
fn tail(text: &str) -> String {
    let text = text.trim_end();
    let start = text.len().saturating_sub(600);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{:?}", &text[start..])
}

/// The items of the README's table of target forms (`node[01-20]`,
/// `n[0-10/2]`, …), each through `ctl hosts` with the README's own
/// inventory example.
#[test]
fn the_readme_target_forms_and_inventory_expand() {
    let readme = std::fs::read_to_string(util::repo_root().join("README.md")).expect("README");
    let world = World::new();
    let inventory = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains("[groups]"))
        .expect("the README's inventory example");
    std::fs::write(world.path("hosts.toml"), inventory).expect("inventory");

    let section = readme
        .split("### Many hosts at once")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .expect("the README's section on target lists");
    let mut forms = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let item = row.split('|').nth(1).unwrap_or("");
        forms.extend(
            item.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .filter(|f| lookup(FORMS_NOT_RUN, f).is_none()),
        );
    }
    assert!(forms.len() >= 6, "forms found: {forms:?}");
    assert!(
        forms.iter().any(|f| f.contains('/')),
        "a step range: {forms:?}"
    );
    let mut failures = Vec::new();
    for form in &forms {
        let (code, stdout, stderr) = world.run(&format!("ctl hosts '{form}'"));
        if code != Some(0) || stdout.is_empty() {
            failures.push(format!(
                "ctl hosts '{form}': exit {code:?}: {}",
                stderr.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The inventory example's own claims: labpc07 is left out of @lab and
    // gets its entry's port with the range's user.
    let (code, stdout, stderr) = world.run("ctl hosts @lab");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.lines().count(), 19, "{stdout}");
    assert!(!stdout.contains("labpc07"), "{stdout}");
    assert!(stdout.starts_with("lab@labpc01:7000\n"), "{stdout}");
    let (code, stdout, stderr) = world.run("ctl hosts labpc07,cuda01,@gpu");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "lab@labpc07:7723\ncuda01:7723\ngpu1\ngpu2\ngpu3\ngpu4\n"
    );
}

//! `ctl exec`'s output modes beyond live prefixed lines, on real agents:
//! `-N`, `-L`, `-B`, `--diff`, the hosts still running on Enter and after
//! Ctrl-C (under tmux), and memory that stays bounded in every gathering
//! mode however much the hosts print (ctl's peak RSS read from /proc).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::checks::{env_with_fleet, take_down_last};
use crate::util::*;

/// The most ctl's peak RSS may reach while hosts print far more than
/// that between them. ctl's own footprint (runtime, TLS) is well under
/// it; the outputs below are [`LINES`] lines of `seq` on each of three
/// hosts, about 31 MB each, and ctl used to hold them all.
pub(crate) const PEAK_RSS_KIB: u64 = 48 * 1024;

/// `seq 1 LINES`: about 31 MB of output per host, past the spool's
/// memory part many times over.
const LINES: u64 = 4_000_000;

fn seq_lines(prefix: &str, each: &mut impl FnMut(&[u8])) {
    let mut buf = Vec::with_capacity(1 << 16);
    for i in 1..=LINES {
        buf.extend_from_slice(prefix.as_bytes());
        buf.extend_from_slice(i.to_string().as_bytes());
        buf.push(b'\n');
        if buf.len() > 60_000 {
            each(&buf);
            buf.clear();
        }
    }
    each(&buf);
}

/// What a measured ctl run left: status, stdout's BLAKE3 hash and length,
/// the first MiBs of stdout, stderr, and the peak RSS in KiB.
pub(crate) struct Measured {
    pub(crate) code: Option<i32>,
    pub(crate) hash: blake3::Hash,
    pub(crate) len: u64,
    pub(crate) head: Vec<u8>,
    pub(crate) stderr: String,
    pub(crate) peak_kib: u64,
}

/// Runs `cmd` with its stdout hashed as it comes, and polls its VmHWM
/// (the kernel's high-water mark of its RSS) until it exits.
pub(crate) fn measured(mut cmd: Command) -> Measured {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ctl");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut hasher = blake3::Hasher::new();
        let mut head = Vec::new();
        let mut len = 0u64;
        let mut buf = vec![0; 1 << 16];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    len += n as u64;
                    if head.len() < 8 << 20 {
                        head.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
        (hasher.finalize(), len, head)
    });
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    let mut code = None;
    let ended = wait_until(Duration::from_secs(120), || {
        // Read before checking for the exit: the mark is gone once the
        // process is a zombie, and it only ever grows.
        if let Some(kib) = std::fs::read_to_string(&status_file)
            .ok()
            .as_deref()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak_kib = peak_kib.max(kib);
        }
        match child.try_wait().expect("wait") {
            Some(status) => {
                code = status.code();
                true
            }
            None => false,
        }
    });
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(ended, "ctl did not end within 120 s");
    let (hash, len, head) = reader.join().unwrap();
    Measured {
        code,
        hash,
        len,
        head,
        stderr: errors.join().unwrap(),
        peak_kib,
    }
}

/// The hash and length of the bytes `make` produces.
fn expected(make: impl FnOnce(&mut dyn FnMut(&[u8]))) -> (blake3::Hash, u64) {
    let mut hasher = blake3::Hasher::new();
    let mut len = 0;
    make(&mut |bytes: &[u8]| {
        hasher.update(bytes);
        len += bytes.len() as u64;
    });
    (hasher.finalize(), len)
}

#[track_caller]
pub(crate) fn assert_bounded(mode: &str, run: &Measured) {
    assert!(run.peak_kib > 0, "{mode}: VmHWM was read");
    assert!(
        run.peak_kib < PEAK_RSS_KIB,
        "{mode}: ctl peaked at {} KiB of RSS for outputs of {} bytes",
        run.peak_kib,
        run.len
    );
}

#[test]
fn gathering_modes_hold_big_outputs_in_bounded_memory() {
    let (env, _fleet) = env_with_fleet(3);
    let hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let seq = format!("seq 1 {LINES}");
    let ctl = |args: &[&str]| {
        let mut cmd = env.ctl();
        cmd.args(args);
        cmd
    };

    // -b: one block, its bytes exact.
    let run = measured(ctl(&["exec", "-b", "@lab", &seq]));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let rule = "-".repeat(15);
    let want = expected(|out| {
        out(format!("{rule}\n127.0.0.[2-4] (3)\n{rule}\n").as_bytes());
        seq_lines("", &mut |b| out(b));
    });
    assert_eq!((run.hash, run.len), want, "-b gives the output once, whole");
    assert_bounded("-b", &run);

    // -L: every host's lines, prefixed, in node order.
    let run = measured(ctl(&["exec", "-L", "127.0.0.[4,2-3]", &seq]));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let want = expected(|out| {
        for host in hosts {
            seq_lines(&format!("{host}: "), &mut |b| out(b));
        }
    });
    assert_eq!(
        (run.hash, run.len),
        want,
        "-L gives every line of every host"
    );
    assert_bounded("-L", &run);

    // --diff: outputs this big are not compared line by line, and said so.
    let odd = format!("{FLEET_HOST} {seq}; [ $H = 127.0.0.3 ] && echo extra; true");
    let run = measured(ctl(&["exec", "--diff", "@lab", &odd]));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.len, 0);
    assert_eq!(
        run.stderr,
        format!(
            "ctl: 127.0.0.3 (1): output of {} bytes differs from that of 127.0.0.[2,4] (2); \
             over 8 MiB, not compared line by line\n",
            expected(|out| seq_lines("", &mut |b| out(b))).1 + 6
        )
    );
    assert_bounded("--diff", &run);

    // --json: 1 MiB of each embedded by default, the rest counted.
    let run = measured(ctl(&["exec", "--json", "@lab", &seq]));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let full = {
        let mut all = Vec::new();
        seq_lines("", &mut |b| all.extend_from_slice(b));
        all
    };
    let records: Vec<serde_json::Value> = String::from_utf8(run.head.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    for record in &records {
        let stdout = record["stdout"].as_str().unwrap().as_bytes();
        assert_eq!(stdout, &full[..1 << 20], "the first MiB, exact");
        assert_eq!(record["stdout_omitted"], full.len() - (1 << 20));
        assert_eq!(record["stderr_omitted"], 0);
    }
    assert_bounded("--json", &run);

    // -o: the files whole.
    let dir = env.root.path().join("out");
    let run = measured(ctl(&["exec", "-o", dir.to_str().unwrap(), "@lab", &seq]));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for host in hosts {
        let written = std::fs::read(dir.join(format!("{host}.out"))).unwrap();
        assert!(written == full, "{host}.out is the whole output");
    }
    assert_bounded("-o", &run);
}

#[test]
fn no_prefix_and_by_host_give_the_lines_byte_exact() {
    let (env, _fleet) = env_with_fleet(10);
    // 127.0.0.[11,2,10,3]: node order is .2, .3, .10, .11.
    let command = format!("{FLEET_HOST} printf 'one %s\\ntwo\\n' $H; echo err $H >&2; printf tail");
    let out = env.ctl_run(&["exec", "-L", "127.0.0.[11,2,10,3]", &command]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let order = ["127.0.0.2", "127.0.0.3", "127.0.0.10", "127.0.0.11"];
    let by_host: String = order
        .iter()
        .map(|h| format!("{h}: one {h}\n{h}: two\n{h}: tail\n"))
        .collect();
    assert_eq!(stdout_of(&out), by_host);
    // Stderr stays live and prefixed.
    let mut errors: Vec<String> = stderr_of(&out).lines().map(str::to_owned).collect();
    errors.sort();
    let mut want: Vec<String> = order.iter().map(|h| format!("{h}: err {h}")).collect();
    want.sort();
    assert_eq!(errors, want);

    // -L -N: the hosts' outputs one after the other, in node order.
    let out = env.ctl_run(&["exec", "-L", "-N", "127.0.0.[11,2,10,3]", &command]);
    let plain: String = order
        .iter()
        .map(|h| format!("one {h}\ntwo\ntail\n"))
        .collect();
    assert_eq!(stdout_of(&out), plain);

    // -N live: whole lines without the prefix; one host's bytes exact,
    // binary ones included.
    let out = env.ctl_run(&["exec", "-N", "127.0.0.[2]", "printf 'a\\0\\377b\\nc\\n'"]);
    assert_eq!(out.stdout, b"a\0\xffb\nc\n");
    let out = env.ctl_run(&["exec", "-N", "127.0.0.[2-11]", &command]);
    let mut lines: Vec<&str> = stdout_of(&out).leak().lines().collect();
    lines.sort();
    let mut want: Vec<String> = (2..=11)
        .flat_map(|i| [format!("one 127.0.0.{i}"), "two".into(), "tail".into()])
        .collect();
    want.sort();
    assert_eq!(lines, want, "every line whole");
    let mut errors: Vec<&str> = stderr_of(&out).leak().lines().collect();
    errors.sort();
    let mut want: Vec<String> = (2..=11).map(|i| format!("err 127.0.0.{i}")).collect();
    want.sort();
    assert_eq!(errors, want);

    // -b -N: each distinct output once, without a header.
    let out = env.ctl_run(&["exec", "-b", "-N", "@lab", "echo same"]);
    assert_eq!(stdout_of(&out), "same\n");
}

#[test]
fn gather_all_puts_stderr_with_stdout() {
    let (env, _fleet) = env_with_fleet(4);
    // The same text on stderr of two hosts and on stdout of a third: -B
    // gathers them as one output.
    let command = format!(
        "{FLEET_HOST} case $H in 127.0.0.[2-3]) echo same >&2;; 127.0.0.4) echo same;; \
         *) echo other;; esac"
    );
    let out = env.ctl_run(&["exec", "-B", "@lab", &command]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let rule = "-".repeat(15);
    assert_eq!(
        stdout_of(&out),
        format!("{rule}\n127.0.0.[2-4] (3)\n{rule}\nsame\n{rule}\n127.0.0.5 (1)\n{rule}\nother\n")
    );
    assert_eq!(stderr_of(&out), "", "nothing is left on stderr");
    // -b keeps stderr live and apart.
    let out = env.ctl_run(&["exec", "-b", "@lab", &command]);
    let mut errors: Vec<String> = stderr_of(&out).lines().map(str::to_owned).collect();
    errors.sort();
    assert_eq!(errors, ["127.0.0.2: same", "127.0.0.3: same"]);
}

#[test]
fn diff_shows_the_odd_host_against_the_most_common_output() {
    let (env, mut fleet) = env_with_fleet(5);
    // 127.0.0.6 is down: ctl got no output from it, and it is left out.
    take_down_last(&mut fleet);
    let command = format!(
        "{FLEET_HOST} echo a; [ $H = 127.0.0.4 ] && echo B || echo b; echo c; echo d; echo e; \
         echo f; echo g; [ $H = 127.0.0.4 ] && printf h || echo h"
    );
    let out = env.ctl_run(&["exec", "--diff", "@lab", &command]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    assert_eq!(
        stdout_of(&out),
        "--- 127.0.0.[2-3,5] (3)\n\
         +++ 127.0.0.4 (1)\n\
         @@ -1,8 +1,8 @@\n \
         a\n\
         -b\n\
         +B\n \
         c\n \
         d\n \
         e\n \
         f\n \
         g\n\
         -h\n\
         +h\n\
         \\ No newline at end of file\n"
    );
    assert!(
        stderr_of(&out).contains("127.0.0.6: "),
        "the host that failed is named: {}",
        stderr_of(&out)
    );
    // When every host agrees there is nothing to show.
    let out = env.ctl_run(&["exec", "--diff", "127.0.0.[2-5]", "echo same"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out), "");
}

#[test]
fn enter_prints_the_hosts_still_running_and_ctrl_c_names_them() {
    require_tool!("tmux");
    let (env, _fleet) = env_with_fleet(4);
    // 127.0.0.4 and .5 wait (20 s at most) for the test to release them.
    let release = env.root.path().join("release");
    let command = format!(
        "{FLEET_HOST} case $H in 127.0.0.[4-5]) i=0; while [ ! -e {} ] && [ $i -lt 400 ]; \
         do sleep 0.05; i=$((i+1)); done;; esac; echo done",
        release.display()
    );
    let ctl = bin("ctl");
    let started = || {
        let terminal = Terminal::start(
            &env,
            (200, 50),
            &format!("{} exec @lab '{command}'", ctl.display()),
            "exec sleep 600",
        );
        terminal.wait_for("2/4 done");
        terminal
    };
    let terminal = started();
    terminal.keys(&["Enter"]);
    terminal.wait_for("ctl: 2 of 4 hosts still running: 127.0.0.[4-5]");
    std::fs::write(&release, "").unwrap();
    let screen = terminal.wait_for("rc=0");
    assert!(screen.contains("127.0.0.5: done"), "{screen}");
    drop(terminal);

    // Ctrl-C: the end of the run names the hosts it cut short.
    std::fs::remove_file(&release).unwrap();
    let terminal = started();
    terminal.keys(&["C-c"]);
    let screen = terminal.wait_for("rc=130");
    assert!(
        screen.contains("ctl: interrupted; still running then: 127.0.0.[4-5]"),
        "{screen}"
    );
}

#[test]
fn a_full_stdout_or_an_unusable_spool_fails_the_run_with_one_line() {
    let (env, _fleet) = env_with_fleet(2);
    for mode in [&["-B"][..], &["-L"], &["--diff"], &["-N"], &["-L", "-B"]] {
        let out = env
            .ctl()
            .arg("exec")
            .args(mode)
            .args(["@lab", "seq 100000; echo $$"])
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        assert_eq!(
            stderr_of(&out),
            "ctl: cannot write to stdout: no space left on the device\n",
            "{mode:?}"
        );
        assert_eq!(out.status.code(), Some(255), "{mode:?}");
    }
    // Output past the spool's memory part with nowhere to put it.
    let out = env
        .ctl()
        .env("TMPDIR", env.root.path().join("missing"))
        .args(["exec", "-b", "@lab", "head -c 3000000 /dev/zero"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    let said = stderr_of(&out);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.starts_with("ctl: cannot keep output in a temporary file: "),
        "{said}"
    );
    assert_eq!(stdout_of(&out), "");
}

#[test]
fn max_output_sets_what_json_embeds() {
    let (env, _fleet) = env_with_fleet(2);
    let out = env.ctl_run(&[
        "exec",
        "--json",
        "--max-output",
        "4K",
        "@lab",
        "seq 10000; seq 3 >&2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let all: String = (1..=10000).map(|i| format!("{i}\n")).collect();
    for record in json_lines(&out) {
        assert_eq!(record["stdout"], all[..4096]);
        assert_eq!(record["stdout_omitted"], all.len() - 4096);
        assert_eq!(record["stderr"], "1\n2\n3\n");
        assert_eq!(record["stderr_omitted"], 0);
    }
    let out = env.ctl_run(&["exec", "--json", "--max-output", "0", "@lab", "echo hi"]);
    for record in json_lines(&out) {
        assert_eq!(record["stdout"], "");
        assert_eq!(record["stdout_omitted"], 3);
    }
    let out = env.ctl_run(&["exec", "--json", "--max-output", "lots", "@lab", "true"]);
    assert_failed_saying(&out, 255, "\"lots\" is not a size");
    assert_eq!(stderr_of(&out).lines().count(), 1);
    // Without --json the flag would do nothing: it is refused.
    let out = env.ctl_run(&["exec", "--max-output", "4K", "@lab", "true"]);
    assert_failed_saying(&out, 255, "--json");
}

/// Ctrl-C while gathered output (`-b`) is written out to a slow reader,
/// after every host ended: ctl stops writing and exits 130. Before, the
/// signal went to the run's runtime, gone by then, and was lost: ctl
/// wrote on to the end (or until its reader gave up).
#[test]
fn ctrl_c_stops_gathered_output_being_written_out() {
    let (env, fleet) = env_with_fleet(2);
    let mut ctl = env
        .ctl()
        .args(["exec", "-b", "@lab", "seq 1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctl");
    for agent in &fleet.agents {
        assert!(
            agent.wait_for_log("outcome=\"exit 0\"").is_some(),
            "{}",
            agent.log()
        );
    }
    // ctl writes out the first block into a pipe nobody reads yet.
    std::thread::sleep(Duration::from_millis(500));
    send_signal(ctl.id(), "INT");
    let mut stdout = Vec::new();
    ctl.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    let out = ctl.wait_with_output().expect("ctl");
    assert_eq!(out.status.code(), Some(130), "{}", stderr_of(&out));
    // Both hosts print the same, one block of about 6.9 MB: cut short.
    assert!(
        stdout.len() < 6_000_000,
        "{} bytes written after Ctrl-C",
        stdout.len()
    );
}

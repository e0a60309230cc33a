//! A real terminal for ctl: a detached tmux session with a server of its
//! own, read back with `capture-pane`.

use std::process::Command;

use super::{DEADLINE, Env, marker, wait_until};

/// A tmux session running one shell command, its server killed when dropped.
pub struct Terminal {
    socket: String,
    /// `capture-pane` flags beyond `-p`.
    capture: &'static [&'static str],
}

impl Terminal {
    /// Runs `command` (with the env's ctl config dir) in a `cols`x`rows`
    /// terminal, then prints `rc=STATUS` and runs `after`, which keeps the
    /// pane open.
    pub fn start(env: &Env, (cols, rows): (u16, u16), command: &str, after: &str) -> Terminal {
        let terminal = Terminal {
            socket: marker("rexec-test-tmux"),
            capture: &[],
        };
        let status = terminal
            .tmux()
            .args([
                "new-session",
                "-d",
                "-x",
                &cols.to_string(),
                "-y",
                &rows.to_string(),
            ])
            .arg(format!(
                "REXEC_CONFIG_DIR='{}' {command}; echo \"rc=$?\"; {after}",
                env.ctl_dir.display()
            ))
            .status()
            .unwrap();
        assert!(status.success());
        terminal
    }

    /// The screen is read with wrapped lines joined (`capture-pane -J`).
    pub fn joining_wrapped_lines(mut self) -> Terminal {
        self.capture = &["-J"];
        self
    }

    /// `tmux` talking to this session's server.
    pub fn tmux(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket]);
        cmd
    }

    /// What the terminal shows now.
    pub fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p"])
            .args(self.capture)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits for `needle` on the screen; returns the screen.
    pub fn wait_for(&self, needle: &str) -> String {
        let mut screen = String::new();
        let found = wait_until(DEADLINE, || {
            screen = self.screen();
            screen.contains(needle)
        });
        assert!(found, "{needle:?} never appeared on:\n{screen}");
        screen
    }

    /// Types `keys` (tmux `send-keys` names).
    pub fn keys(&self, keys: &[&str]) {
        assert!(
            self.tmux()
                .arg("send-keys")
                .args(keys)
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

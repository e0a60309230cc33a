//! Skipping a test that cannot run here, loudly, and failing instead under
//! REXEC_TEST_REQUIRE_ALL=1.

/// The variable under which a skip is a failure. CI (`.ci/run`) sets it,
/// having installed every tool the tests need and running as root, so a
/// test that would skip there points at a broken CI machine, not at a
/// missing optional tool.
pub const REQUIRE_ALL: &str = "REXEC_TEST_REQUIRE_ALL";

/// Says on stderr that `test` is skipped and why. Written to the process's
/// stderr directly, past the test harness's capture of `eprintln!`, so a
/// skipped test shows in every run, not only with `--nocapture`. With
/// REXEC_TEST_REQUIRE_ALL=1 the test fails instead.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    if std::env::var_os(REQUIRE_ALL).is_some_and(|v| v == "1") {
        panic!("{test} cannot run here ({why}), and {REQUIRE_ALL}=1 makes a skip a failure");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The Debian package that installs `tool`, for the hint of a skipped test.
pub fn debian_package_of(tool: &str) -> &str {
    match tool {
        "systemd-analyze" | "systemctl" | "systemd-socket-activate" => "systemd",
        "systemd-nspawn" => "systemd-container",
        "mount" | "umount" => "mount",
        "kill" | "ps" => "procps",
        other => other,
    }
}

/// Whether `tool` is on the PATH. When it is not, says on stderr that
/// `test` is skipped and why, with the Debian package to install, so a
/// skipped test is never silent (and fails under REXEC_TEST_REQUIRE_ALL=1).
pub fn have_tool(tool: &str, test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    if !found {
        skipped(
            test,
            &format!(
                "`{tool}` is not installed (Debian: apt-get install {})",
                debian_package_of(tool)
            ),
        );
    }
    found
}

/// Whether this process runs as root; when not, says that `test` is
/// skipped because `why` (see [`skipped`]).
pub fn root_or_skip(test: &str, why: &str) -> bool {
    let root = super::running_as_root();
    if !root {
        skipped(test, why);
    }
    root
}

/// The name of the test function this is expanded in, as [`skipped`]
/// shows it.
macro_rules! test_name {
    () => {{
        fn here() {}
        $crate::util::function_name(std::any::type_name_of_val(&here))
    }};
}

/// Returns from the test, saying it is skipped because `why`, unless this
/// process runs as root.
macro_rules! require_root {
    ($why:expr) => {
        if !$crate::util::root_or_skip($crate::util::test_name!(), $why) {
            return;
        }
    };
}

/// Returns from the test, saying it is skipped, unless `tool` is on the
/// PATH (see [`have_tool`]).
macro_rules! require_tool {
    ($tool:expr) => {
        if !$crate::util::have_tool($tool, $crate::util::test_name!()) {
            return;
        }
    };
}

pub(crate) use {require_root, require_tool, test_name};

/// The last segment of the path of a function item `here` declared in a
/// test: the test's name.
pub fn function_name(path_of_here: &'static str) -> &'static str {
    path_of_here
        .split("::")
        .filter(|segment| *segment != "here" && *segment != "{{closure}}")
        .last()
        .unwrap_or(path_of_here)
}

//! `ctl`: the rexec command line client. Everything is in the library.

fn main() -> std::process::ExitCode {
    rexec_ctl::main()
}

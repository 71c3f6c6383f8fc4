//! `spacectl`: see [`spaceraft::ctl`].

fn main() -> std::process::ExitCode {
    spaceraft::ctl::main()
}

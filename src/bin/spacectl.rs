//! `spacectl`: see [`spaceraft::ctl`].

/// mimalloc: the hot path allocates many small buffers (gRPC frames, entries,
/// records); glibc's allocator cost about a sixth of the CPU in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    spaceraft::ctl::main()
}

//! A snapshot file as a node receives it from its leader (checked whole by
//! `snapshot_file::verify` before install) or as `spacectl snapshot status`
//! reads one (`ctl::snapshot::summarize`). Raw bytes rarely pass the magic
//! and the checksums, so half the inputs are framed here first: the
//! fuzzer's bytes become the payloads of well-formed frames, and reach the
//! frame decoder.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// Splits frame payloads in a framed input.
const FRAME_SEPARATOR: &[u8] = b"|frame|";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let file = if mode % 2 == 0 { rest.to_vec() } else { framed(rest) };
    let path = snapshot_path();
    std::fs::write(path, &file).expect("write the snapshot file");
    let _ = spaceraft::storage::snapshot_file::verify(path);
    let _ = spaceraft::ctl::snapshot::summarize(path);
});

/// The magic, then each separated part of `payloads` as a frame with its
/// length and checksum.
fn framed(payloads: &[u8]) -> Vec<u8> {
    let mut file = b"SPRSNAP1".to_vec();
    let mut rest = payloads;
    loop {
        let (payload, next) = match rest.windows(FRAME_SEPARATOR.len()).position(|w| w == FRAME_SEPARATOR) {
            Some(at) => (&rest[..at], Some(&rest[at + FRAME_SEPARATOR.len()..])),
            None => (rest, None),
        };
        file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        file.extend_from_slice(payload);
        match next {
            Some(next) => rest = next,
            None => return file,
        }
    }
}

/// One file per fuzzing process, in memory when /dev/shm exists.
fn snapshot_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        let dir = tempfile::Builder::new().prefix("spaceraft-fuzz-").tempdir_in(base).expect("temp dir");
        dir.keep().join("snapshot.bin")
    })
}

//! A node's or a gateway's config file: arbitrary TOML text loaded through
//! the loaders `spaceraft node --config` and `spaceraft gateway --config`
//! use (`NodeConfig::load`, `GatewayConfig::load`), checks included.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spaceraft::config::{FlagOverrides, NodeConfig};
use spaceraft::gateway::config::{GatewayConfig, GatewayFlags};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = config_path();
    std::fs::write(path, text).expect("write the config file");
    if let Ok(config) = NodeConfig::load(Some(path), &FlagOverrides::default()) {
        let _ = config.limits.request_limits();
        let _ = config.advertise_addr();
    }
    let _ = GatewayConfig::load(Some(path), &GatewayFlags::default());
});

/// One file per fuzzing process, in memory when /dev/shm exists.
fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        let dir = tempfile::Builder::new().prefix("spaceraft-fuzz-").tempdir_in(base).expect("temp dir");
        dir.keep().join("config.toml")
    })
}

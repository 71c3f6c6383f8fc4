//! Running the real `spacectl` binary in tests, and reading what it did.
#![allow(dead_code)]

use std::process::{Command, Output};

use serde_json::Value;

/// Runs spacectl against `endpoints`, with none of the environment that
/// would change its defaults.
pub fn spacectl(endpoints: &str, args: &[&str]) -> Output {
    Command::new(super::spacectl_bin())
        .env("SPACERAFT_ENDPOINTS", endpoints)
        .env_remove("SPACERAFT_USER")
        .env_remove("SPACERAFT_OUTPUT")
        .env_remove("SPACERAFT_YES")
        .args(args)
        .output()
        .expect("run spacectl")
}

pub fn code(output: &Output) -> i32 {
    output.status.code().expect("exit code")
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// The JSON document on stdout of a command that succeeded.
pub fn json(output: &Output) -> Value {
    assert!(output.status.success(), "{}", stderr(output));
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

/// The JSON document on stdout, whatever the exit code.
pub fn json_any(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

//! One-time join tokens. An operator mints one (`spacectl node join-token`);
//! the meta cluster keeps only its SHA-256 and its expiry; a new node
//! presents it in `Join` (beside its certificate) and the meta state machine
//! redeems it once, atomically with registering the node.

use sha2::{Digest, Sha256};

/// A new token: 32 random bytes, hex (the only copy; never stored).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The wall clock in Unix milliseconds, as join tokens' expiry reads it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// What the directory keeps of a token.
pub fn digest(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_unique_and_their_digests_stable() {
        let (one, other) = (super::new_token(), super::new_token());
        assert_ne!(one, other);
        assert_eq!(one.len(), 64);
        assert_eq!(super::digest(&one), super::digest(&format!("{one}\n")));
        assert_ne!(super::digest(&one), super::digest(&other));
    }
}

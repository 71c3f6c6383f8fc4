//! Checks of what a request carries. A node checks a request against its
//! configured limits before it becomes a Raft proposal; apply checks every
//! command again against the protocol's ceilings ([`CEILINGS`], the same on
//! every replica, so apply stays deterministic), so a command that reached
//! the log some other way is refused, not stored.

use std::collections::BTreeMap;

use super::record::{MessageBlock, SpaceRecord};

/// Limits a node enforces on what it proposes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub body_bytes_max: usize,
    pub name_len_max: usize,
    pub members_len_max: usize,
    pub idempotency_key_len_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { body_bytes_max: 64 * 1024, name_len_max: 64, members_len_max: 10_000, idempotency_key_len_max: 128 }
    }
}

/// The protocol's ceilings: no configured limit goes above them, and apply
/// refuses any command past them.
pub const CEILINGS: Limits = Limits {
    body_bytes_max: 4 * 1024 * 1024,
    name_len_max: 255,
    members_len_max: 100_000,
    idempotency_key_len_max: 1024,
};

/// The highest seq a space copy may carry. No space gets near it, and the
/// bound keeps the seq arithmetic of apply far from overflowing.
pub const SEQ_MAX: u64 = 1 << 62;

/// Checks every name, body and key `command` carries against `limits`, and
/// that a space copy's seqs are consistent. The directory's commands are
/// not checked here.
pub fn check_command(command: &super::Command, limits: &Limits) -> Result<(), InvalidRequest> {
    use super::Command;
    match command {
        Command::CreateSpace { name, members, attrs, .. } => {
            check_name("space name", name, limits)?;
            check_members(members, limits)?;
            check_attrs(attrs, limits)
        }
        Command::Posts(posts) => posts.iter().try_for_each(|post| check_post(post, limits)),
        Command::UpdateMembers { name, add, remove, .. } => {
            check_name("space name", name, limits)?;
            add.iter().chain(remove).try_for_each(|user| check_name("user name", user, limits))
        }
        Command::SealSpace { name, .. } | Command::DeleteSpace { name } | Command::DropSealed { name } => {
            check_name("space name", name, limits)
        }
        Command::ImportSpace { record, blocks, .. } => check_import(record, blocks, limits),
        Command::Meta(_) => Ok(()),
    }
}

/// Checks a space copied in by a move like the create and the posts it
/// came from, and that its seqs are consistent: counters in order and at
/// most [`SEQ_MAX`], blocks non-empty, in seq order, not overlapping, and
/// within the record's seqs. Apply relies on all of it (seq arithmetic,
/// the dedup index's order), and `Admin.Propose` takes a copy from outside.
pub fn check_import(record: &SpaceRecord, blocks: &[MessageBlock], limits: &Limits) -> Result<(), InvalidRequest> {
    check_name("space name", &record.name, limits)?;
    if record.members.len() > limits.members_len_max {
        return Err(InvalidRequest::TooManyMembers { len: record.members.len(), max: limits.members_len_max });
    }
    record.members.iter().try_for_each(|member| check_name("user name", member, limits))?;
    check_attrs(&record.attrs, limits)?;
    let inconsistent = |why: String| Err(InvalidRequest::InconsistentCopy { why });
    if record.last_seq > SEQ_MAX {
        return inconsistent(format!("last seq {} is above {SEQ_MAX}", record.last_seq));
    }
    if record.first_seq == 0 || record.first_seq > record.last_seq + 1 {
        return inconsistent(format!("first seq {} does not fit last seq {}", record.first_seq, record.last_seq));
    }
    let mut next_free_seq = 1;
    for block in blocks {
        if block.messages.is_empty() {
            return inconsistent(format!("the block at seq {} is empty", block.first_seq));
        }
        if block.first_seq < next_free_seq {
            return inconsistent(format!("the block at seq {} overlaps the one before it", block.first_seq));
        }
        let end_seq = block.first_seq.saturating_add(block.messages.len() as u64);
        if end_seq > record.last_seq + 1 {
            return inconsistent(format!(
                "the block at seq {} ends past last seq {}",
                block.first_seq, record.last_seq
            ));
        }
        next_free_seq = end_seq;
        for message in &block.messages {
            check_name("user name", &message.author, limits)?;
            check_body(&message.body, limits)?;
            check_idempotency_key(&message.idempotency_key, limits)?;
        }
    }
    Ok(())
}

fn check_attrs(attrs: &BTreeMap<String, String>, limits: &Limits) -> Result<(), InvalidRequest> {
    for (key, value) in attrs {
        check_name("attribute name", key, limits)?;
        if value.len() > limits.body_bytes_max {
            return Err(InvalidRequest::AttributeTooLarge { len: value.len(), max: limits.body_bytes_max });
        }
    }
    Ok(())
}

/// Checks one post's space, author, body and key against `limits`.
pub fn check_post(post: &super::PostCommand, limits: &Limits) -> Result<(), InvalidRequest> {
    check_name("space name", &post.space, limits)?;
    check_name("user name", &post.author, limits)?;
    check_body(&post.body, limits)?;
    check_idempotency_key(&post.idempotency_key, limits)
}

/// A request that no state could make valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("invalid {what} {value:?}: {why}")]
    Name { what: &'static str, value: String, why: String },
    #[error("message body is empty")]
    EmptyBody,
    #[error("message body is {len} bytes, more than the limit of {max} bytes")]
    BodyTooLarge { len: usize, max: usize },
    #[error("idempotency key is {len} bytes, more than the limit of {max} bytes")]
    KeyTooLong { len: usize, max: usize },
    #[error("a space needs at least one member")]
    NoMembers,
    #[error("a space has {len} members, more than the limit of {max}")]
    TooManyMembers { len: usize, max: usize },
    #[error("an attribute value is {len} bytes, more than the limit of {max} bytes")]
    AttributeTooLarge { len: usize, max: usize },
    #[error("inconsistent space copy: {why}")]
    InconsistentCopy { why: String },
}

/// Space and user names: 1..=max characters of `a-z A-Z 0-9 . _ -`,
/// starting with a letter or digit.
pub fn check_name(what: &'static str, value: &str, limits: &Limits) -> Result<(), InvalidRequest> {
    let invalid = |why: String| InvalidRequest::Name { what, value: value.to_string(), why };
    if value.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if value.len() > limits.name_len_max {
        return Err(invalid(format!("longer than {} characters", limits.name_len_max)));
    }
    let first = value.chars().next().expect("checked non-empty");
    if !first.is_ascii_alphanumeric() {
        return Err(invalid("must start with a letter or digit".into()));
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(invalid(format!("character {bad:?} is not allowed (use a-z, 0-9, '.', '_', '-')")));
    }
    Ok(())
}

pub fn check_body(body: &str, limits: &Limits) -> Result<(), InvalidRequest> {
    if body.is_empty() {
        return Err(InvalidRequest::EmptyBody);
    }
    if body.len() > limits.body_bytes_max {
        return Err(InvalidRequest::BodyTooLarge { len: body.len(), max: limits.body_bytes_max });
    }
    Ok(())
}

pub fn check_idempotency_key(key: &str, limits: &Limits) -> Result<(), InvalidRequest> {
    if key.len() > limits.idempotency_key_len_max {
        return Err(InvalidRequest::KeyTooLong { len: key.len(), max: limits.idempotency_key_len_max });
    }
    Ok(())
}

pub fn check_members(members: &[String], limits: &Limits) -> Result<(), InvalidRequest> {
    if members.is_empty() {
        return Err(InvalidRequest::NoMembers);
    }
    if members.len() > limits.members_len_max {
        return Err(InvalidRequest::TooManyMembers { len: members.len(), max: limits.members_len_max });
    }
    for member in members {
        check_name("user name", member, limits)?;
    }
    Ok(())
}

impl InvalidRequest {
    /// The request field it is about.
    pub fn field(&self) -> String {
        match self {
            InvalidRequest::Name { what, .. } => what.replace(' ', "_"),
            InvalidRequest::EmptyBody | InvalidRequest::BodyTooLarge { .. } => "body".into(),
            InvalidRequest::KeyTooLong { .. } => "idempotency_key".into(),
            InvalidRequest::NoMembers | InvalidRequest::TooManyMembers { .. } => "members".into(),
            InvalidRequest::AttributeTooLarge { .. } => "attrs".into(),
            InvalidRequest::InconsistentCopy { .. } => "blocks".into(),
        }
    }

    /// Whether it is about a size over its limit (rather than a malformed value).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            InvalidRequest::BodyTooLarge { .. }
                | InvalidRequest::KeyTooLong { .. }
                | InvalidRequest::TooManyMembers { .. }
                | InvalidRequest::AttributeTooLarge { .. }
        )
    }
}

impl From<InvalidRequest> for super::ApplyError {
    fn from(invalid: InvalidRequest) -> Self {
        super::ApplyError::Invalid {
            field: invalid.field(),
            too_large: invalid.is_too_large(),
            why: invalid.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_the_documented_alphabet_only() {
        let limits = Limits::default();
        assert!(check_name("space name", "general", &limits).is_ok());
        assert!(check_name("space name", "team-7.ops_x", &limits).is_ok());
        assert!(check_name("space name", "", &limits).is_err());
        assert!(check_name("space name", "-lead", &limits).is_err());
        assert!(check_name("space name", "a\0b", &limits).is_err());
        assert!(check_name("space name", "caf\u{e9}", &limits).is_err());
        assert!(check_name("space name", &"x".repeat(65), &limits).is_err());
    }

    #[test]
    fn bodies_must_be_non_empty_and_within_the_limit() {
        let limits = Limits { body_bytes_max: 4, ..Limits::default() };
        assert_eq!(check_body("", &limits), Err(InvalidRequest::EmptyBody));
        assert!(check_body("abcd", &limits).is_ok());
        assert_eq!(check_body("abcde", &limits), Err(InvalidRequest::BodyTooLarge { len: 5, max: 4 }));
    }
}

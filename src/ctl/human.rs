//! Words for people: the pieces of spacectl's table output that would
//! otherwise show Rust's formatting (`1..=2`, `[1, 2]`, a reason as raw
//! JSON, "1 members"). JSON output never goes through here.

use crate::placement::Reason;

/// `1 member`, `2 members`.
pub fn count(number: u64, noun: &str) -> String {
    if number == 1 {
        format!("1 {noun}")
    } else {
        format!("{number} {noun}s")
    }
}

/// `1, 2, 3`; `none` when empty.
pub fn ids(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// `node 2`, `nodes 1, 3`.
pub fn nodes(nodes: &[u64]) -> String {
    match nodes {
        [one] => format!("node {one}"),
        _ => format!("nodes {}", ids(nodes)),
    }
}

/// A space's retained seqs: `1 to 42`, `7` for one, `none` when it holds no
/// message (a new space, or one whose messages were all trimmed).
pub fn seq_range(first_seq: u64, last_seq: u64) -> String {
    if last_seq == 0 || last_seq < first_seq {
        "none".into()
    } else if first_seq == last_seq {
        first_seq.to_string()
    } else {
        format!("{first_seq} to {last_seq}")
    }
}

/// A replica count per role as in `cluster status`: `1 leader`,
/// `2 followers`, `1 shut down`.
pub fn role_count(role: &str, number: u64) -> String {
    match role {
        "shutdown" => format!("{number} shut down"),
        _ => count(number, role),
    }
}

/// The placement policy's reason for a space's cluster, as the directory
/// stores it (the JSON of [`Reason`]), in words; text that is not a known
/// reason is shown as it is.
pub fn placement_reason(stored: &str) -> String {
    let Ok(reason) = serde_json::from_str::<Reason>(stored) else {
        return stored.to_string();
    };
    match reason {
        Reason::SameOrg { org, shared_members } => {
            format!("with the other spaces of org {org} ({} shared)", count(shared_members as u64, "member"))
        }
        Reason::MemberOverlap { shared_members } => {
            format!("with spaces of its members ({} shared)", count(shared_members as u64, "member"))
        }
        Reason::HotSpread { shared_members } => format!(
            "a busy space, on the least active cluster with its members ({} shared)",
            count(shared_members as u64, "member")
        ),
        Reason::LeastLoaded => "no affinity to any cluster: the least loaded one".into(),
        Reason::NoCapacity => "every cluster was full: a new cluster".into(),
        Reason::NoHeadroom => "no affinity, and no cluster with room for a new group: a new cluster".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(count(0, "member"), "0 members");
        assert_eq!(count(1, "member"), "1 member");
        assert_eq!(count(2, "space"), "2 spaces");
        assert_eq!(role_count("leader", 1), "1 leader");
        assert_eq!(role_count("follower", 2), "2 followers");
        assert_eq!(role_count("shutdown", 2), "2 shut down");
    }

    #[test]
    fn lists_of_ids_read_as_lists() {
        assert_eq!(ids(&[]), "none");
        assert_eq!(ids(&[1, 2, 3]), "1, 2, 3");
        assert_eq!(nodes(&[2]), "node 2");
        assert_eq!(nodes(&[1, 3]), "nodes 1, 3");
    }

    #[test]
    fn seq_ranges_read_as_words() {
        assert_eq!(seq_range(1, 0), "none");
        assert_eq!(seq_range(5, 4), "none");
        assert_eq!(seq_range(3, 3), "3");
        assert_eq!(seq_range(1, 42), "1 to 42");
    }

    #[test]
    fn every_placement_reason_reads_as_words() {
        let reasons = [
            Reason::SameOrg { org: "acme".into(), shared_members: 2 },
            Reason::MemberOverlap { shared_members: 1 },
            Reason::HotSpread { shared_members: 3 },
            Reason::LeastLoaded,
            Reason::NoCapacity,
            Reason::NoHeadroom,
        ];
        let described: Vec<String> =
            reasons.iter().map(|reason| placement_reason(&serde_json::to_string(reason).unwrap())).collect();
        insta::assert_snapshot!(described.join("\n"), @r"
        with the other spaces of org acme (2 members shared)
        with spaces of its members (1 member shared)
        a busy space, on the least active cluster with its members (3 members shared)
        no affinity to any cluster: the least loaded one
        every cluster was full: a new cluster
        no affinity, and no cluster with room for a new group: a new cluster
        ");
        for text in &described {
            assert!(!text.contains(['{', '"', '_']), "{text}");
        }
        assert_eq!(placement_reason("moved by an operator"), "moved by an operator");
    }
}

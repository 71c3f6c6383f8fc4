//! Where a request goes next, decided without I/O: a function of the
//! request's kind, the hop it arrived on, this node's role in the request's
//! cluster, the error of the last attempt and the time left. The runner
//! ([`crate::node::runner`]) observes the role, asks [`decide`], and carries
//! the answer out: serve here, forward to a peer, wait and look again, or
//! give up with an error kind. Every request that must reach a cluster's
//! leader or one of its replicas goes through this one table.
//!
//! Rules, in order:
//! 1. A final error (not transient, see [`ErrorKind::is_transient`]) ends the
//!    request with that error. So does `outcome_unknown` for a request that
//!    is not safe to send again (a post without an idempotency key): it may
//!    have committed, and sending it again could commit it twice.
//! 2. Out of time: give up. A transient error that surely took no effect
//!    becomes `no_quorum`; `outcome_unknown` stays what it is.
//! 3. A request on the leader hop is the sender's to retry: this node gives
//!    up at once, with `not_leader` (and its hint) when it does not lead.
//! 4. After a failed attempt, pause once before trying again, unless another
//!    voter of a cluster not hosted here is left to try.
//! 5. By role: the leader serves (when a majority of its voters' nodes is
//!    up, else it waits for one: nothing is proposed that cannot commit); a
//!    follower serves reads of applied state and forwards the rest to a known
//!    leader, or waits for one; a node that does not host the cluster
//!    forwards to its voters in turn (member hop), and on the member hop
//!    refuses with `not_proposed` so the sender tries the next voter.

use crate::error::{ErrorKind, LeaderHint};
use crate::wire::Hop;

/// A node a request can be sent to.
pub type Peer = LeaderHint;

/// Pause before trying again after a failed attempt.
pub const RETRY_PAUSE_MS: u64 = 20;
/// Longest single wait for a leader to become known or a quorum to come up;
/// the runner looks again sooner when the group's state changes.
pub const LEADER_POLL_MS: u64 = 100;

/// What a request needs from its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The leader: writes, read-index rounds, membership and leadership
    /// changes.
    Leader,
    /// Any replica's applied state: history, space info, subscriptions.
    AnyReplica,
}

/// The request as the router sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestKind {
    pub need: Need,
    /// Whether sending it again cannot apply it twice (it carries an
    /// idempotency key, or it is a read, or its command is idempotent).
    pub resend_safe: bool,
}

impl RequestKind {
    pub const READ: RequestKind = RequestKind { need: Need::AnyReplica, resend_safe: true };
    pub const IDEMPOTENT_WRITE: RequestKind = RequestKind { need: Need::Leader, resend_safe: true };
    pub const ONCE_ONLY_WRITE: RequestKind = RequestKind { need: Need::Leader, resend_safe: false };

    pub fn write(resend_safe: bool) -> RequestKind {
        RequestKind { need: Need::Leader, resend_safe }
    }
}

/// This node's role in the request's cluster, as observed just now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// This replica leads; `quorum_up` says whether a majority of the
    /// voters' nodes answer (this node's failure detector).
    Leader { quorum_up: bool },
    /// This replica follows; its leader when known.
    Follower { leader: Option<Peer> },
    /// The cluster is not hosted here: its voters, this region's first.
    Absent { voters: Vec<Peer> },
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    pub request: RequestKind,
    pub hop: Hop,
    pub role: &'a Role,
    /// The error of the last attempt (None before the first).
    pub last_error: Option<&'a ErrorKind>,
    /// Attempts made so far (served or forwarded).
    pub attempts: u32,
    /// Whether the runner has already paused since the last attempt.
    pub paused: bool,
    pub time_left_ms: u64,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Serve it on this replica.
    Serve,
    /// Send it to `to`, marked with `hop`.
    Forward { to: Peer, hop: Hop },
    /// Look again after at most `after_ms` (sooner when the group changes).
    Wait { after_ms: u64 },
    /// Fail with this kind (the last attempt's error when it has this kind).
    GiveUp(ErrorKind),
}

/// The routing table. Pure: the same situation always gets the same answer.
pub fn decide(situation: &Situation<'_>) -> Next {
    let Situation { request, hop, role, last_error, attempts, paused, time_left_ms } = situation;
    if let Some(error) = last_error {
        let retryable = error.is_transient()
            && (error.surely_not_applied() || request.resend_safe)
            && !matches!(error, ErrorKind::Moved { .. });
        if !retryable {
            return Next::GiveUp((*error).clone());
        }
    }
    if *time_left_ms == 0 {
        return Next::GiveUp(match last_error {
            Some(ErrorKind::OutcomeUnknown) => ErrorKind::OutcomeUnknown,
            _ => ErrorKind::NoQuorum,
        });
    }
    if let (Hop::Leader, Some(error)) = (hop, last_error) {
        return Next::GiveUp((*error).clone());
    }
    if last_error.is_some() && !paused {
        let another_voter_left = match role {
            Role::Absent { voters } => !voters.is_empty() && !(*attempts as usize).is_multiple_of(voters.len()),
            _ => false,
        };
        if !another_voter_left {
            return Next::Wait { after_ms: RETRY_PAUSE_MS };
        }
    }
    match role {
        Role::Leader { quorum_up: true } => Next::Serve,
        Role::Leader { quorum_up: false } if request.need == Need::AnyReplica => Next::Serve,
        Role::Leader { quorum_up: false } => Next::Wait { after_ms: LEADER_POLL_MS },
        Role::Follower { .. } if request.need == Need::AnyReplica => Next::Serve,
        Role::Follower { leader } if *hop == Hop::Leader => {
            Next::GiveUp(ErrorKind::NotLeader { leader: leader.clone() })
        }
        Role::Follower { leader: Some(leader) } => Next::Forward { to: leader.clone(), hop: Hop::Leader },
        Role::Follower { leader: None } => Next::Wait { after_ms: LEADER_POLL_MS },
        Role::Absent { .. } if *hop >= Hop::Member => Next::GiveUp(ErrorKind::NotProposed),
        Role::Absent { voters } if voters.is_empty() => Next::GiveUp(ErrorKind::NoQuorum),
        Role::Absent { voters } => {
            Next::Forward { to: voters[*attempts as usize % voters.len()].clone(), hop: Hop::Member }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64) -> Peer {
        Peer { node_id: id, addr: format!("10.0.0.{id}:7000") }
    }

    fn roles() -> Vec<Role> {
        vec![
            Role::Leader { quorum_up: true },
            Role::Leader { quorum_up: false },
            Role::Follower { leader: Some(peer(2)) },
            Role::Follower { leader: None },
            Role::Absent { voters: vec![peer(4), peer(5), peer(6)] },
            Role::Absent { voters: vec![] },
        ]
    }

    fn errors() -> Vec<Option<ErrorKind>> {
        vec![
            None,
            Some(ErrorKind::NotLeader { leader: Some(peer(3)) }),
            Some(ErrorKind::NotLeader { leader: None }),
            Some(ErrorKind::NoQuorum),
            Some(ErrorKind::NotProposed),
            Some(ErrorKind::OutcomeUnknown),
            Some(ErrorKind::Unreachable),
            Some(ErrorKind::NotFound),
            Some(ErrorKind::Deleted),
            Some(ErrorKind::NotMember),
            Some(ErrorKind::Exists),
            Some(ErrorKind::Moved { to: 9 }),
            Some(ErrorKind::Moving),
            Some(ErrorKind::Trimmed),
            Some(ErrorKind::Invalid { field: "space_name".into() }),
            Some(ErrorKind::TooLarge { field: "body".into() }),
            Some(ErrorKind::Refused),
            Some(ErrorKind::Unauthenticated),
            Some(ErrorKind::PermissionDenied),
            Some(ErrorKind::ResourceExhausted),
            Some(ErrorKind::WrongCluster),
            Some(ErrorKind::Internal),
        ]
    }

    fn kinds() -> Vec<RequestKind> {
        vec![RequestKind::READ, RequestKind::IDEMPOTENT_WRITE, RequestKind::ONCE_ONLY_WRITE]
    }

    /// The table, written out a second way: what each case must answer.
    fn expected(situation: &Situation<'_>) -> Next {
        let Situation { request, hop, role, last_error, attempts, paused, time_left_ms } = situation;
        // 1. final errors, and unknown outcomes of once-only writes
        match last_error {
            Some(
                error @ (ErrorKind::NotFound
                | ErrorKind::Deleted
                | ErrorKind::NotMember
                | ErrorKind::Exists
                | ErrorKind::Moved { .. }
                | ErrorKind::Trimmed
                | ErrorKind::Invalid { .. }
                | ErrorKind::TooLarge { .. }
                | ErrorKind::Refused
                | ErrorKind::Unauthenticated
                | ErrorKind::PermissionDenied
                | ErrorKind::ResourceExhausted
                | ErrorKind::WrongCluster
                | ErrorKind::Internal),
            ) => return Next::GiveUp((*error).clone()),
            Some(ErrorKind::OutcomeUnknown) if !request.resend_safe => return Next::GiveUp(ErrorKind::OutcomeUnknown),
            _ => {}
        }
        // 2. out of time
        if *time_left_ms == 0 {
            return Next::GiveUp(if *last_error == Some(&ErrorKind::OutcomeUnknown) {
                ErrorKind::OutcomeUnknown
            } else {
                ErrorKind::NoQuorum
            });
        }
        // 3. the leader hop never retries
        if *hop == Hop::Leader {
            if let Some(error) = last_error {
                return Next::GiveUp((*error).clone());
            }
        }
        // 4. pause once after a failure, unless another voter is left
        if last_error.is_some() && !paused {
            let next_voter =
                matches!(role, Role::Absent { voters } if !voters.is_empty() && *attempts % voters.len() as u32 != 0);
            if !next_voter {
                return Next::Wait { after_ms: RETRY_PAUSE_MS };
            }
        }
        // 5. by role
        let read = request.need == Need::AnyReplica;
        match role {
            Role::Leader { quorum_up } => {
                if *quorum_up || read {
                    Next::Serve
                } else {
                    Next::Wait { after_ms: LEADER_POLL_MS }
                }
            }
            Role::Follower { leader } => {
                if read {
                    Next::Serve
                } else if *hop == Hop::Leader {
                    Next::GiveUp(ErrorKind::NotLeader { leader: leader.clone() })
                } else if let Some(leader) = leader {
                    Next::Forward { to: leader.clone(), hop: Hop::Leader }
                } else {
                    Next::Wait { after_ms: LEADER_POLL_MS }
                }
            }
            Role::Absent { voters } => {
                if *hop == Hop::Member || *hop == Hop::Leader {
                    Next::GiveUp(ErrorKind::NotProposed)
                } else if voters.is_empty() {
                    Next::GiveUp(ErrorKind::NoQuorum)
                } else {
                    Next::Forward { to: voters[*attempts as usize % voters.len()].clone(), hop: Hop::Member }
                }
            }
        }
    }

    #[test]
    fn every_case_of_the_table() {
        let mut cases = 0;
        for request in kinds() {
            for hop in Hop::ALL {
                for role in roles() {
                    for error in errors() {
                        for attempts in 0..4 {
                            for paused in [false, true] {
                                for time_left_ms in [0, 1, 5_000] {
                                    let situation = Situation {
                                        request,
                                        hop,
                                        role: &role,
                                        last_error: error.as_ref(),
                                        attempts,
                                        paused,
                                        time_left_ms,
                                    };
                                    assert_eq!(decide(&situation), expected(&situation), "{situation:?}");
                                    cases += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 3 * 4 * 6 * 22 * 4 * 2 * 3);
    }

    #[test]
    fn a_keyless_post_whose_outcome_is_unknown_is_never_sent_again() {
        for role in roles() {
            for hop in Hop::ALL {
                let situation = Situation {
                    request: RequestKind::ONCE_ONLY_WRITE,
                    hop,
                    role: &role,
                    last_error: Some(&ErrorKind::OutcomeUnknown),
                    attempts: 1,
                    paused: true,
                    time_left_ms: 5_000,
                };
                assert_eq!(decide(&situation), Next::GiveUp(ErrorKind::OutcomeUnknown));
            }
        }
    }

    #[test]
    fn a_request_never_goes_back_to_an_earlier_hop() {
        for request in kinds() {
            for hop in Hop::ALL {
                for role in roles() {
                    for error in errors() {
                        let situation = Situation {
                            request,
                            hop,
                            role: &role,
                            last_error: error.as_ref(),
                            attempts: 1,
                            paused: true,
                            time_left_ms: 5_000,
                        };
                        if let Next::Forward { hop: next_hop, .. } = decide(&situation) {
                            assert!(next_hop > hop, "{situation:?} forwards on hop {next_hop:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_voters_of_a_cluster_not_hosted_here_are_tried_in_turn_then_paused() {
        let role = Role::Absent { voters: vec![peer(4), peer(5)] };
        let error = ErrorKind::Unreachable;
        let at = |attempts, paused| {
            decide(&Situation {
                request: RequestKind::ONCE_ONLY_WRITE,
                hop: Hop::Client,
                role: &role,
                last_error: if attempts == 0 { None } else { Some(&error) },
                attempts,
                paused,
                time_left_ms: 100,
            })
        };
        assert_eq!(at(0, false), Next::Forward { to: peer(4), hop: Hop::Member });
        assert_eq!(at(1, false), Next::Forward { to: peer(5), hop: Hop::Member });
        assert_eq!(at(2, false), Next::Wait { after_ms: RETRY_PAUSE_MS });
        assert_eq!(at(2, true), Next::Forward { to: peer(4), hop: Hop::Member });
    }
}

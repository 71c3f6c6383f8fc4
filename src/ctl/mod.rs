//! `spacectl`, the operator and user CLI.
//!
//! Data goes to stdout (a table, or JSON with `-o json`); progress and errors
//! go to stderr. Exit codes are an API (see `docs/spacectl.md`):
//! 0 ok, 1 failed (refused request), 2 usage, 3 unreachable or timed out,
//! 4 permission denied, 5 no leader / no quorum.

pub mod client;
mod dial;
mod human;
pub mod output;
pub mod parse;
pub mod snapshot;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use client::{CtlError, Endpoints};
use output::Output;
use parse::{parse_bool, parse_duration};

#[derive(Parser, Debug)]
#[command(name = "spacectl", version, about = "Operate and use a Spaceraft cluster")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Node gRPC addresses, comma separated; any one works.
    #[arg(long, global = true, env = "SPACERAFT_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:7001")]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, env = "SPACERAFT_OUTPUT", value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Give up connecting to an endpoint after this long.
    #[arg(long, global = true, env = "SPACERAFT_DIAL_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub dial_timeout: Duration,
    /// Refuse nodes of any other cluster than this one (its id: `spacectl
    /// cluster status`, or the `cluster-id` file of a node's data directory).
    #[arg(long, global = true, env = "SPACERAFT_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// Give up on a command after this long.
    #[arg(long, global = true, env = "SPACERAFT_COMMAND_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// The cluster's CA certificate (PEM): talk TLS to the nodes and trust
    /// only certificates it signed. Without it, plaintext (a cluster run
    /// with --insecure).
    #[arg(long, global = true, env = "SPACERAFT_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// A client certificate to present (an operator's, from `spaceraft certs`).
    #[arg(long, global = true, env = "SPACERAFT_CERT")]
    pub cert: Option<std::path::PathBuf>,
    /// The private key of --cert.
    #[arg(long, global = true, env = "SPACERAFT_KEY")]
    pub key: Option<std::path::PathBuf>,
    /// A bearer token (a user's, or one with the operator role).
    #[arg(long, global = true, env = "SPACERAFT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create and inspect spaces.
    #[command(subcommand)]
    Space(SpaceCommand),
    /// Post a message; prints its seq once committed.
    Post {
        space: String,
        text: String,
        /// The posting user (must be a member). With a user's --token, the
        /// token's user (and may be left out).
        #[arg(long = "as", env = "SPACERAFT_USER")]
        user: Option<String>,
        /// Idempotency key; a retry with the same key commits once. One is
        /// generated when not given, so spacectl's own retries are safe.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Print committed messages of a space.
    History {
        space: String,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Read as this user (must be a member); without it, an operator read.
        #[arg(long = "as", env = "SPACERAFT_USER")]
        user: Option<String>,
        /// Confirm with the leader first (read index): sees every post
        /// acknowledged before the command started.
        #[arg(long)]
        linearizable: bool,
    },
    /// Stream committed messages as they arrive (Ctrl-C to stop).
    Tail {
        space: String,
        /// First seq to print; default: only new messages.
        #[arg(long)]
        from: Option<u64>,
        #[arg(long = "as", env = "SPACERAFT_USER")]
        user: Option<String>,
    },
    /// Cluster administration.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Members of a space cluster.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Leadership of a space cluster.
    #[command(subcommand)]
    Leader(LeaderCommand),
    /// Drain, return to service, or retire a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Drain every node of a region.
    #[command(subcommand)]
    Region(RegionCommand),
    /// The gateways that follow the nodes.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Save a cluster's state to a file, or inspect such a file.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Monitoring checks with Nagios exit codes (0 ok, 1 warning, 2
    /// critical, 3 unknown).
    #[command(subcommand)]
    Check(CheckCommand),
    /// Users' tokens.
    #[command(subcommand)]
    User(UserCommand),
    /// Print spacectl's version.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Add a node to a space cluster: as a learner that catches up, then
    /// (without --learner) promoted to voter.
    Add {
        node: u64,
        #[arg(long)]
        cluster: u64,
        /// Stop at learner.
        #[arg(long)]
        learner: bool,
    },
    /// Promote a learner of a space cluster to voter.
    Promote {
        node: u64,
        #[arg(long)]
        cluster: u64,
    },
    /// Remove a node from a space cluster (destructive: needs --yes). A
    /// removal that would leave no majority of the voters up is refused
    /// unless --force.
    Remove {
        node: u64,
        #[arg(long)]
        cluster: u64,
        #[arg(long)]
        force: bool,
        /// Confirm the removal.
        #[arg(long, env = "SPACERAFT_YES", value_parser = parse_bool)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CheckCommand {
    /// Every cluster has a leader and a majority answering, enough regions
    /// answer, and no replica lags too far behind its leader.
    Cluster {
        /// Fewer regions with an answering node is critical.
        #[arg(long, default_value_t = 1)]
        expect_regions: usize,
        /// A replica this many entries behind its leader is a warning.
        #[arg(long, default_value_t = 1_000)]
        lag_warning: u64,
        /// A replica this many entries behind its leader is critical.
        #[arg(long, default_value_t = 10_000)]
        lag_critical: u64,
        #[arg(long, value_enum, default_value_t = CheckFormat::Nagios)]
        format: CheckFormat,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckFormat {
    Nagios,
    Json,
    Prometheus,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// The node hands over every leadership and stops serving gateways;
    /// with --wait, until it leads nothing.
    Drain {
        node: u64,
        #[arg(long)]
        wait: bool,
    },
    /// Return a drained node to service.
    Recommission { node: u64 },
    /// Mint a one-time token a new node presents to join (`join_token` in
    /// its config, or `--join-token`). Printed once; the cluster keeps only
    /// its hash.
    JoinToken {
        /// How long the token is valid.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Drain the node, then remove it from every space cluster (destructive:
    /// needs --yes; --force as for `member remove`).
    Decommission {
        node: u64,
        #[arg(long, env = "SPACERAFT_YES", value_parser = parse_bool)]
        yes: bool,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Mint a token for USER, signed with the issuer's key (offline: no
    /// node is asked). Prints the token.
    Token {
        user: String,
        /// How long the token is valid.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// The token grants the operator role.
        #[arg(long)]
        operator: bool,
        /// The issuer's signing key: KID.pem (Ed25519) or KID.hs256.
        #[arg(long, env = "SPACERAFT_SIGNING_KEY")]
        signing_key: std::path::PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum RegionCommand {
    /// Drain every node of the region; with --wait, until they lead nothing.
    Drain {
        region: String,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Build a fresh snapshot of a cluster (0: the meta cluster) on one of
    /// its replicas and save it to FILE.
    Save {
        #[arg(long)]
        cluster: u64,
        file: std::path::PathBuf,
    },
    /// Check a snapshot file and show what it holds.
    Status { file: std::path::PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum GatewayCommand {
    /// Per gateway: region, clients connected, subscriptions, the replica(s)
    /// it follows and their lag, and when it last reported.
    List,
}

#[derive(Subcommand, Debug)]
pub enum LeaderCommand {
    /// Hand a space cluster's leadership to one of its voters.
    Transfer {
        #[arg(long)]
        cluster: u64,
        #[arg(long)]
        to: u64,
        /// Poll until the leadership has moved (exit 1 if it has not by the
        /// command timeout).
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SpaceCommand {
    /// Create a space (idempotent for the same members and attributes).
    Create {
        name: String,
        /// Members, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<String>,
        /// Attributes as KEY=VALUE; repeatable.
        #[arg(long = "attr", value_parser = parse_attr)]
        attrs: Vec<(String, String)>,
    },
    /// Show a space: members, attributes, seq range, and its placement
    /// (cluster, version, the policy's reason, a move under way).
    Info { name: String },
    /// Add or remove members of a space.
    #[command(subcommand)]
    Members(SpaceMembersCommand),
    /// Delete a space with its messages (destructive: needs --yes). Its
    /// subscriptions end, and its name is not taken again.
    Delete {
        name: String,
        /// Confirm the deletion.
        #[arg(long, env = "SPACERAFT_YES", value_parser = parse_bool)]
        yes: bool,
    },
    /// List spaces (those a user is a member of, with --as).
    List {
        #[arg(long = "as", env = "SPACERAFT_USER")]
        user: Option<String>,
    },
    /// Move a space to another space cluster, online: posts and
    /// subscriptions carry on; running it again finishes a cut-short move.
    Move {
        name: String,
        /// The space cluster to move it to.
        #[arg(long)]
        to: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum SpaceMembersCommand {
    /// Add users to a space.
    Add {
        space: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove users from a space: their subscriptions end before any later
    /// message reaches them.
    Remove {
        space: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// One row per node: region, address, health, raft roles, groups led,
    /// size on disk, errors. With --replicas, one row per replica instead:
    /// role, term, log, commit and applied index, leader.
    Status {
        #[arg(long)]
        replicas: bool,
    },
    /// Space clusters from the directory: voters, preferred leader region,
    /// spaces placed.
    List,
    /// Set the region a space cluster's leader should sit in ("" for none).
    Prefer { cluster: u64, region: String },
    /// One space cluster: its replicas per region, the leader (marked),
    /// term, commit and applied index, each replica's lag behind the
    /// leader's commit, the preferred leader region.
    Info { cluster: u64 },
    /// Whether every cluster (the meta cluster and every space cluster) has
    /// a leader and a majority of its replicas answering: exit 0 if so, 5
    /// if not.
    Health,
}

fn parse_attr(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("attribute {text:?} is not KEY=VALUE"))?;
    Ok((key.to_string(), value.to_string()))
}

/// The meta cluster's id in member commands.
const META_CLUSTER: u64 = 0;

/// Drains `nodes`; with `wait`, until none of them leads a group.
async fn drain(endpoints: &Endpoints, out: &Output, nodes: &[u64], wait: bool) -> Result<(), CtlError> {
    for node in nodes {
        endpoints.set_drained(*node, true).await?;
    }
    if wait {
        let progress = out.spinner(format!("moving leaderships off {}", human::nodes(nodes)));
        let drained = endpoints.wait_leading_nothing(nodes).await;
        progress.finish_and_clear();
        drained?;
    }
    out.drained(nodes, true);
    Ok(())
}

/// Runs spacectl with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

pub async fn run(cli: Cli) -> Result<(), CtlError> {
    let out = Output::new(cli.global.output);
    // Offline: minted here with the issuer's key.
    if let Command::User(UserCommand::Token { user, ttl, operator, signing_key }) = &cli.command {
        let signer = crate::security::token::Signer::load(signing_key).map_err(CtlError::Usage)?;
        let token = signer.mint(user, *ttl, *operator, cli.global.cluster_id.as_deref()).map_err(CtlError::Usage)?;
        out.token(user, &token, *ttl);
        return Ok(());
    }
    let endpoints = Endpoints::new(&cli.global)?;
    match cli.command {
        Command::User(_) => unreachable!("minted above"),
        Command::Space(SpaceCommand::Create { name, members, attrs }) => {
            let attrs: HashMap<String, String> = attrs.into_iter().collect();
            let response = endpoints.create_space(name, members, attrs).await?;
            out.space_created(&response);
        }
        Command::Space(SpaceCommand::Info { name }) => {
            let space = endpoints.get_space(name.clone()).await?;
            let directory = endpoints.directory().await?;
            let placement = directory.placements.iter().find(|placement| placement.space == name);
            out.space_info(&space, placement);
        }
        Command::Space(SpaceCommand::Members(SpaceMembersCommand::Add { space, users })) => {
            let space = endpoints.update_members(space, users, Vec::new()).await?;
            out.space_info(&space, None);
        }
        Command::Space(SpaceCommand::Members(SpaceMembersCommand::Remove { space, users })) => {
            let space = endpoints.update_members(space, Vec::new(), users).await?;
            out.space_info(&space, None);
        }
        Command::Space(SpaceCommand::Delete { name, yes }) => {
            if !yes {
                return Err(CtlError::Usage(format!("deleting space {name} removes its messages for good: add --yes")));
            }
            let deleted = endpoints.delete_space(name).await?;
            out.space_deleted(&deleted);
        }
        Command::Post { space, text, user, idempotency_key } => {
            if user.is_none() && cli.global.token.is_none() {
                return Err(CtlError::Usage("post needs the posting user: --as USER (or a user's --token)".into()));
            }
            let key = idempotency_key.unwrap_or_else(|| format!("spacectl-{:032x}", rand::random::<u128>()));
            let response = endpoints.post(space, user.unwrap_or_default(), text, key).await?;
            out.posted(&response);
        }
        Command::History { space, from, limit, user, linearizable } => {
            let response = endpoints.history(space, user.unwrap_or_default(), from, limit, linearizable).await?;
            out.messages(&response.messages);
        }
        Command::Tail { space, from, user } => {
            endpoints.tail(space, user.unwrap_or_default(), from.unwrap_or(0), |message| out.message(message)).await?;
        }
        Command::Space(SpaceCommand::Move { name, to }) => {
            let progress = out.spinner(format!("moving {name} to space cluster {to}"));
            let moved = endpoints.move_space(name.clone(), to).await;
            progress.finish_and_clear();
            out.space_moved(&name, &moved?);
        }
        Command::Member(MemberCommand::Add { node, cluster, learner }) => {
            let mut members = endpoints.change_members(cluster, node, "add_learner", false).await?;
            if !learner {
                members = endpoints.change_members(cluster, node, "promote", false).await?;
            }
            out.members(cluster, &members);
        }
        Command::Member(MemberCommand::Promote { node, cluster }) => {
            let members = endpoints.change_members(cluster, node, "promote", false).await?;
            out.members(cluster, &members);
        }
        Command::Member(MemberCommand::Remove { node, cluster, force, yes }) => {
            if !yes {
                return Err(CtlError::Usage(format!(
                    "removing node {node} from space cluster {cluster} is destructive: add --yes"
                )));
            }
            let members = endpoints.change_members(cluster, node, "remove", force).await?;
            out.members(cluster, &members);
        }
        Command::Leader(LeaderCommand::Transfer { cluster, to, wait }) => {
            endpoints.transfer_leader(cluster, to).await?;
            if wait {
                let progress = out.spinner(format!("waiting for node {to} to lead space cluster {cluster}"));
                let moved = endpoints.wait_for_leader(cluster, to).await;
                progress.finish_and_clear();
                moved?;
            }
            out.leader_transferred(cluster, to, wait);
        }
        Command::Node(NodeCommand::Drain { node, wait }) => {
            drain(&endpoints, &out, &[node], wait).await?;
        }
        Command::Region(RegionCommand::Drain { region, wait }) => {
            let directory = endpoints.directory().await?;
            let nodes: Vec<u64> = directory.nodes.iter().filter(|n| n.region == region).map(|n| n.node_id).collect();
            if nodes.is_empty() {
                return Err(CtlError::Failed(format!("no node is registered in region {region:?}")));
            }
            drain(&endpoints, &out, &nodes, wait).await?;
        }
        Command::Node(NodeCommand::JoinToken { ttl }) => {
            let reply = endpoints.join_token(ttl).await?;
            out.join_token(&reply);
        }
        Command::Node(NodeCommand::Recommission { node }) => {
            endpoints.set_drained(node, false).await?;
            out.drained(&[node], false);
        }
        Command::Node(NodeCommand::Decommission { node, yes, force }) => {
            if !yes {
                return Err(CtlError::Usage(format!("decommissioning node {node} is destructive: add --yes")));
            }
            drain(&endpoints, &out, &[node], true).await?;
            let directory = endpoints.directory().await?;
            // The meta cluster keeps its number of voters: a meta learner
            // (a node that joined; this region's first) takes the place.
            if directory.meta_voters.contains(&node) {
                let region_of = |id: u64| directory.nodes.iter().find(|n| n.node_id == id).map(|n| n.region.clone());
                let drained = |id: u64| directory.nodes.iter().any(|n| n.node_id == id && n.drained);
                let mut candidates: Vec<u64> =
                    directory.meta_learners.iter().copied().filter(|id| *id != node && !drained(*id)).collect();
                candidates.sort_by_key(|id| (region_of(*id) != region_of(node), *id));
                if let Some(replacement) = candidates.first() {
                    let members = endpoints.change_members(META_CLUSTER, *replacement, "promote", false).await?;
                    out.members(META_CLUSTER, &members);
                }
            }
            if directory.meta_voters.contains(&node) || directory.meta_learners.contains(&node) {
                let members = endpoints.change_members(META_CLUSTER, node, "remove", force).await?;
                out.members(META_CLUSTER, &members);
            }
            for cluster in directory.clusters.iter().filter(|c| c.voters.contains(&node) || c.learners.contains(&node))
            {
                let members = endpoints.change_members(cluster.cluster_id, node, "remove", force).await?;
                out.members(cluster.cluster_id, &members);
            }
        }
        Command::Cluster(ClusterCommand::Health) => {
            let status = endpoints.cluster_status().await?;
            let health = output::health(&status.replicas);
            out.health(&health);
            if health.iter().any(|cluster| !cluster.healthy) {
                return Err(CtlError::NoLeader("a cluster has no leader or no majority answering".into()));
            }
        }
        Command::Check(CheckCommand::Cluster { expect_regions, lag_warning, lag_critical, format }) => {
            let status = match endpoints.cluster_status().await {
                Ok(status) => status,
                Err(error) => {
                    output::print_check(&output::unknown_check(&error.to_string()), format);
                    return Err(CtlError::Unreachable(error.to_string()));
                }
            };
            let check = output::check_cluster(&status.replicas, expect_regions, lag_warning, lag_critical);
            output::print_check(&check, format);
            return match check.code {
                0 => Ok(()),
                1 => Err(CtlError::Failed(format!("WARNING: {}", check.summary))),
                2 => Err(CtlError::Critical(format!("CRITICAL: {}", check.summary))),
                _ => Err(CtlError::Unreachable(check.summary)),
            };
        }
        Command::Snapshot(SnapshotCommand::Save { cluster, file }) => {
            let (summary, node_id) = snapshot::save(&endpoints, cluster, &file).await?;
            out.snapshot_saved(&file, &summary, node_id);
        }
        Command::Snapshot(SnapshotCommand::Status { file }) => {
            let summary = snapshot::summarize(&file)?;
            out.snapshot_status(&file, &summary);
        }
        Command::Gateway(GatewayCommand::List) => {
            let gateways = endpoints.gateways().await?;
            out.gateway_list(&gateways.gateways);
        }
        Command::Version => out.version(),
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "spacectl", &mut script);
            output::write_stdout(&script);
        }
        Command::Space(SpaceCommand::List { user }) => {
            let spaces = endpoints.list_spaces(user.unwrap_or_default()).await?;
            out.space_list(&spaces.spaces);
        }
        Command::Cluster(ClusterCommand::Info { cluster }) => {
            let directory = endpoints.directory().await?;
            let entry = directory
                .clusters
                .iter()
                .find(|c| c.cluster_id == cluster)
                .ok_or_else(|| CtlError::Failed(format!("space cluster {cluster} does not exist")))?;
            let status = endpoints.cluster_status().await?;
            out.cluster_info(entry, &status.replicas);
        }
        Command::Cluster(ClusterCommand::List) => {
            let directory = endpoints.directory().await?;
            out.cluster_list(&directory);
        }
        Command::Cluster(ClusterCommand::Prefer { cluster, region }) => {
            endpoints.set_preferred_region(cluster, region.clone()).await?;
            out.preferred(cluster, &region);
        }
        Command::Cluster(ClusterCommand::Status { replicas }) => {
            let status = endpoints.cluster_status().await?;
            if replicas {
                out.cluster_status(&status.replicas);
            } else {
                out.node_status(&status.nodes);
            }
        }
    }
    Ok(())
}

//! spacectl against a real cluster: output shapes (table and JSON) and exit
//! codes are an API.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::ctl::{code, spacectl, stderr};
use common::TestCluster;
use serde_json::Value;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "spacectl failed: {}", stderr(&output));
    stdout(&output)
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().expect("a JSON object").keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spacectl_outputs_and_exit_codes() {
    let mut cluster = TestCluster::start_with("leader_wait_ms = 1000\n").await;
    let endpoints = cluster.endpoints();
    // Only the last node as endpoint: the CLI must still reach the leader.
    let one = cluster.node(3).addr.clone();

    // --- phase: create, post, history
    let created = ok(spacectl(&one, &["space", "create", "general", "--members", "alice,bob", "--attr", "org=acme"]));
    assert!(created.contains("created space general"), "{created}");
    let again = ok(spacectl(
        &one,
        &["space", "create", "general", "--members", "alice,bob", "--attr", "org=acme", "-o", "json"],
    ));
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["existed"], Value::Bool(true));
    assert_eq!(ok(spacectl(&one, &["post", "general", "hello", "--as", "alice"])).trim(), "1");
    let posted: Value = serde_json::from_str(&ok(spacectl(
        &one,
        &["post", "general", "again", "--as", "bob", "--idempotency-key", "k-2", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(keys(&posted), ["duplicate", "seq", "space"]);
    assert_eq!(
        (posted["space"].as_str(), posted["seq"].as_u64(), posted["duplicate"].as_bool()),
        (Some("general"), Some(2), Some(false))
    );
    let retried: Value = serde_json::from_str(&ok(spacectl(
        &endpoints,
        &["post", "general", "again", "--as", "bob", "--idempotency-key", "k-2", "-o", "json"],
    )))
    .unwrap();
    assert_eq!((retried["seq"].as_u64(), retried["duplicate"].as_bool()), (Some(2), Some(true)));

    // Linearizable: node 3 may not have applied the latest post yet.
    let table = ok(spacectl(&one, &["history", "general", "--linearizable"]));
    assert!(table.contains("SEQ") && table.contains("hello") && table.contains("again"), "{table}");
    let lines =
        ok(spacectl(&one, &["history", "general", "--from", "2", "-o", "json", "--as", "alice", "--linearizable"]));
    let messages: Vec<Value> = lines.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(messages.len(), 1);
    assert_eq!(keys(&messages[0]), ["author", "body", "key", "log_index", "seq", "space"]);
    assert_eq!(
        (messages[0]["seq"].as_u64(), messages[0]["author"].as_str(), messages[0]["key"].as_str()),
        (Some(2), Some("bob"), Some("k-2"))
    );

    // Node 3 answers from what it has applied: wait until it has both posts.
    let info = common::wait_until(Duration::from_secs(20), "node 3 to apply both posts", async || {
        let info: Value =
            serde_json::from_str(&ok(spacectl(&one, &["space", "info", "general", "-o", "json"]))).unwrap();
        if info["last_seq"] == 2 {
            Ok(info)
        } else {
            Err(info)
        }
    })
    .await;
    assert_eq!(info["attrs"]["org"], "acme");
    assert_eq!(info["last_seq"], 2);

    // --- phase: cluster status
    // One row per replica: the meta group (0) and the first space cluster
    // (1) on each of the three nodes. (A node slow to follow the directory
    // may not have started its replica of cluster 1 yet: cluster 1 commits
    // with the other two. Wait for it, with a deadline.)
    let status: Value = common::wait_until_blocking(Duration::from_secs(20), "a row for every replica", || {
        let status: Value =
            serde_json::from_str(&ok(spacectl(&one, &["cluster", "status", "--replicas", "-o", "json"]))).unwrap();
        if status.as_array().unwrap().len() == 6 {
            Ok(status)
        } else {
            Err(status)
        }
    });
    let rows = status.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    let clusters: Vec<u64> = rows.iter().map(|row| row["cluster_id"].as_u64().unwrap()).collect();
    assert_eq!(clusters, [0, 0, 0, 1, 1, 1]);
    assert_eq!(
        keys(&rows[0]),
        [
            "address",
            "applied_index",
            "cluster_id",
            "commit_index",
            "error",
            "last_log_index",
            "last_seen_ms",
            "leader_id",
            "node_id",
            "purged_index",
            "region",
            "role",
            "snapshot_index",
            "term"
        ]
    );
    for cluster in [0, 1] {
        let of_cluster: Vec<&Value> = rows.iter().filter(|row| row["cluster_id"] == cluster).collect();
        assert_eq!(of_cluster.iter().filter(|row| row["role"] == "leader").count(), 1);
        let regions: Vec<&str> = of_cluster.iter().map(|row| row["region"].as_str().unwrap()).collect();
        assert_eq!(regions, ["us-east", "eu-west", "ap-south"]);
    }
    for row in rows {
        let seen = row["last_seen_ms"].as_u64().expect("every replica's node was heard from");
        assert!(seen < 10_000, "{row}");
        assert_eq!(seen == 0, row["role"] == "leader", "the leader is seen now, by itself: {row}");
    }
    let table = ok(spacectl(&one, &["cluster", "status", "--replicas"]));
    assert!(table.contains("LEADER") && table.contains("ap-south"), "{table}");

    // One row per node: health, roles, groups led, size on disk.
    // (A replica that started a moment ago may not have heard from its
    // leader yet: wait until every node reports healthy, with a deadline.)
    let nodes: Value = common::wait_until_blocking(Duration::from_secs(20), "every node reports healthy", || {
        let nodes: Value = serde_json::from_str(&ok(spacectl(&one, &["cluster", "status", "-o", "json"]))).unwrap();
        let healthy = nodes.as_array().unwrap().iter().all(|node| node["health"] == "healthy");
        if healthy {
            Ok(nodes)
        } else {
            Err(nodes)
        }
    });
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.iter().map(|n| n["node_id"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        keys(&nodes[0]),
        [
            "address",
            "db_size_bytes",
            "drained",
            "errors",
            "groups",
            "groups_led",
            "health",
            "insecure",
            "node_id",
            "region",
            "roles",
            "uptime_ms",
            "version"
        ]
    );
    let led: u64 = nodes.iter().map(|n| n["groups_led"].as_u64().unwrap()).sum();
    assert_eq!(led, 2, "the meta group and cluster 1 have one leader each: {nodes:?}");
    for node in nodes {
        assert_eq!(node["health"], "healthy", "{node}");
        assert_eq!(node["groups"], 2);
        assert!(node["db_size_bytes"].as_u64().unwrap() > 0);
        assert_eq!(node["errors"], serde_json::json!([]));
    }
    let table = ok(spacectl(&one, &["cluster", "status"]));
    assert!(table.contains("HEALTH") && table.contains("DB SIZE") && table.contains("healthy"), "{table}");

    // --- phase: tail streams committed messages as they arrive
    let mut tail = Command::new(common::spacectl_bin())
        .env("SPACERAFT_ENDPOINTS", &endpoints)
        .args(["tail", "general", "--from", "1", "--as", "alice"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ok(spacectl(&one, &["post", "general", "live one", "--as", "alice"]));
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    common::wait_until_blocking(Duration::from_secs(20), "tail to print three messages", || {
        seen.push(lines.next().expect("tail ended").unwrap());
        if seen.len() == 3 {
            Ok(())
        } else {
            Err(seen.clone())
        }
    });
    let _ = tail.kill();
    let _ = tail.wait();
    assert_eq!(seen, ["1\talice\thello", "2\tbob\tagain", "3\talice\tlive one"]);

    // --- phase: a reader that goes away early (`| head`) ends spacectl quietly
    let history = spacectl_into_closed_pipe(&one, &["history", "general"]);
    assert_eq!(code(&history), 0, "{}", stderr(&history));
    assert!(stderr(&history).is_empty(), "{}", stderr(&history));
    let mut tail = Command::new(common::spacectl_bin())
        .env("SPACERAFT_ENDPOINTS", &endpoints)
        .args(["tail", "general", "--from", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    BufReader::new(tail.stdout.take().unwrap()).read_line(&mut first_line).unwrap();
    assert_eq!(first_line, "1\talice\thello\n");
    // The reader is gone; the next message tail writes ends it.
    ok(spacectl(&one, &["post", "general", "after head", "--as", "alice"]));
    let tail_exit =
        common::wait_until_blocking(Duration::from_secs(20), "tail to end after its reader went away", || {
            tail.try_wait().unwrap().ok_or("still running")
        });
    let mut tail_stderr = String::new();
    tail.stderr.take().unwrap().read_to_string(&mut tail_stderr).unwrap();
    assert_eq!(tail_exit.code(), Some(0), "{tail_stderr}");
    assert!(!tail_stderr.contains("panicked"), "{tail_stderr}");

    // --- phase: exit codes
    let unknown = spacectl(&one, &["post", "nowhere", "hi", "--as", "alice"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains("does not exist"));
    let denied = spacectl(&one, &["post", "general", "hi", "--as", "mallory"]);
    assert_eq!(denied.status.code(), Some(4), "{}", stderr(&denied));
    let usage = spacectl(&one, &["post", "general", "hi"]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    let unreachable = spacectl(
        "127.0.0.1:1",
        &["post", "general", "hi", "--as", "alice", "--command-timeout", "2s", "--dial-timeout", "300ms"],
    );
    assert_eq!(unreachable.status.code(), Some(3), "{}", stderr(&unreachable));
    assert!(stderr(&unreachable).contains("127.0.0.1:1"));

    // --- phase: no quorum
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    // Every node applies the three posts before two of them die.
    let mut admin = cluster.admin(leader).await;
    let status = admin.node_status(spaceraft::pb::NodeStatusRequest::default()).await.unwrap().into_inner();
    let applied = common::space_replica(&status).expect("first space cluster").applied_index;
    cluster.wait_applied(applied, Duration::from_secs(20)).await;
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    for id in (1..=3).filter(|id| *id != survivor) {
        cluster.kill_node(id);
    }
    let survivor_addr = cluster.node(survivor).addr.clone();
    let no_quorum = spacectl(&survivor_addr, &["post", "general", "hi", "--as", "alice", "--command-timeout", "4s"]);
    assert_eq!(no_quorum.status.code(), Some(5), "{}", stderr(&no_quorum));
    // Reads of what is applied still work on the survivor.
    let history = ok(spacectl(&survivor_addr, &["history", "general", "-o", "json"]));
    assert_eq!(history.lines().count(), 4);
}

/// A node frozen (no FIN, no RST: its port still accepts) before a post:
/// spacectl leaves it when its health check goes unanswered within the dial
/// timeout and posts through the next endpoint; that node gives up on a
/// forward to the frozen node once its failure detector takes it as down,
/// and posts to the leader elected after it. All well within the command
/// timeout; the key commits the post once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_goes_on_to_the_next_endpoint_when_the_first_node_is_frozen() {
    let cluster = TestCluster::start().await;
    let endpoints = format!("{},{}", cluster.node(1).addr, cluster.node(2).addr);
    ok(spacectl(&endpoints, &["space", "create", "frozen", "--members", "alice"]));
    cluster.signal_node(1, "STOP");
    let sent = Instant::now();
    let args = ["post", "frozen", "through", "--as", "alice", "--idempotency-key", "k-1"];
    let timeouts = ["--dial-timeout", "1s", "--command-timeout", "30s"];
    let posted = spacectl(&endpoints, &[&args[..], &timeouts[..]].concat());
    let waited = sent.elapsed();
    let again = spacectl(&endpoints, &[&args[..], &timeouts[..], &["-o", "json"]].concat());
    cluster.signal_node(1, "CONT");
    assert_eq!(ok(posted).trim(), "1");
    // One dial timeout, the detector's down_after and an election if the
    // frozen node led: far under the 12 s it took when a forward to the
    // frozen node waited out raft.leader_wait_ms.
    assert!(waited < Duration::from_secs(7), "answered after {waited:?}");
    let again: Value = serde_json::from_str(&ok(again)).unwrap();
    assert_eq!((again["seq"].as_u64(), again["duplicate"].as_bool()), (Some(1), Some(true)), "{again}");
}

/// Runs spacectl with its stdout a pipe whose reader has gone already, as
/// `spacectl … | head` after head has read its lines.
fn spacectl_into_closed_pipe(endpoints: &str, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(common::spacectl_bin())
        .env("SPACERAFT_ENDPOINTS", endpoints)
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run spacectl")
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    for args in [&["completion", "bash"][..], &["version"], &["version", "-o", "json"], &["--help"]] {
        let output = spacectl_into_closed_pipe("127.0.0.1:1", args);
        assert_eq!(code(&output), 0, "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).is_empty(), "{args:?}: {}", stderr(&output));
    }
}

/// Answers every connection with `reply` (after reading what the client
/// sent first), then closes it the way servers do (its side first, then
/// reading what is left, so the reply is not lost to a reset); for as long
/// as the test runs.
fn serve_forever(reply: &'static [u8]) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            let _ = stream.read(&mut [0u8; 1024]);
            let _ = stream.write_all(reply);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            while matches!(stream.read(&mut [0u8; 1024]), Ok(read) if read > 0) {}
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_is_not_a_node_fails_within_the_dial_timeout_and_says_why() {
    let closed = format!("127.0.0.1:{}", common::free_ports(1)[0]);
    // Bound, never accepted: the kernel completes the TCP handshake, and
    // nothing ever answers.
    let silent_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = silent_listener.local_addr().unwrap().to_string();
    let http = serve_forever(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let tls_alert = serve_forever(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]);
    // A gRPC server with a health service but none of a node's services.
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = grpc_listener.local_addr().unwrap().to_string();
    let (_health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc_listener)),
    );

    let cases = [
        (closed, "connection refused"),
        (silent, "accepted the connection but sent nothing within 1s"),
        (http, "an HTTP/1 server answered"),
        (tls_alert, "a TLS server answered"),
        (grpc, "not a Spaceraft node"),
    ];
    for (addr, reason) in cases {
        let started = Instant::now();
        // The command timeout equals the dial timeout: spacectl tries an
        // unreachable endpoint again until the command timeout.
        let output = spacectl(&addr, &["space", "list", "--dial-timeout", "1s", "--command-timeout", "1s"]);
        let elapsed = started.elapsed();
        assert_eq!(code(&output), 3, "{addr}: {}", stderr(&output));
        assert!(stderr(&output).contains(&addr) && stderr(&output).contains(reason), "{reason}: {}", stderr(&output));
        assert!(elapsed < Duration::from_secs(3), "{reason}: took {elapsed:?}");
    }
    drop(silent_listener);
}

/// A line of a shell script as its words: double quotes group, `#` outside
/// quotes starts a comment.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut in_word) = (Vec::new(), String::new(), false, false);
    for character in line.chars() {
        match character {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '#' if !quoted => break,
            ' ' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                }
                in_word = false;
            }
            _ => {
                word.push(character);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The spacectl commands of the README's walk-through ("Using it"), in order.
fn readme_walkthrough() -> Vec<Vec<String>> {
    let readme = include_str!("../README.md");
    let section = readme.split("## Using it").nth(1).expect("the README has a section \"Using it\"");
    let script = section.split("```sh").nth(1).and_then(|rest| rest.split("```").next()).expect("a sh block");
    script.lines().filter(|line| line.starts_with("spacectl ")).map(|line| shell_words(line)[1..].to_vec()).collect()
}

#[test]
fn shell_words_split_like_a_shell() {
    assert_eq!(
        shell_words(r#"spacectl post team "hello from us-east" --as alice   # prints the seq: 1"#),
        ["spacectl", "post", "team", "hello from us-east", "--as", "alice"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_written_on_a_dev_cluster() {
    // Placed as `spaceraft dev` places, with the demo space dev makes.
    let placement = spaceraft::dev::dev_placement();
    // Secured as `spaceraft dev` is: TLS, certificates, spacectl as the operator.
    let cluster = TestCluster::start_secured(
        &format!(
            "[placement]\nspaces_max = {}\nnew_affinity_fill = {}\n",
            placement.spaces_max, placement.new_affinity_fill
        ),
        "",
    )
    .await;
    let endpoints = cluster.endpoints();
    let addrs: Vec<String> = cluster.nodes.iter().map(|node| node.addr.clone()).collect();
    let cluster_id = spaceraft::wire::ClusterId::known(&common::cluster_id(&cluster));
    let tls = cluster.tls.clone().unwrap();
    let operator = spaceraft::security::certs::operator_stem(common::OPERATOR);
    let dial = common::client_tls(&tls, Some(&operator));
    assert!(spaceraft::dev::create_demo_space(&addrs, &cluster_id, Some(&dial)).await.is_some(), "dev's demo space");
    let (cert, key) = spaceraft::security::certs::pair(&tls, &operator);
    let workdir = tempfile::tempdir().unwrap();

    let commands = readme_walkthrough();
    assert!(commands.len() >= 20, "{commands:?}");
    for args in &commands {
        let mut command = Command::new(common::spacectl_bin());
        command
            .current_dir(workdir.path())
            .env("SPACERAFT_ENDPOINTS", &endpoints)
            .env("SPACERAFT_CACERT", spaceraft::security::certs::ca_pem(&tls))
            .env("SPACERAFT_CERT", &cert)
            .env("SPACERAFT_KEY", &key)
            .env_remove("SPACERAFT_USER")
            .env_remove("SPACERAFT_OUTPUT")
            .env_remove("SPACERAFT_YES")
            .args(args);
        if args[0] == "tail" {
            // It streams until interrupted: what it printed is the test.
            let mut tail = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
            let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
            let seen: Vec<String> = (0..2).map(|_| lines.next().expect("tail ended").unwrap()).collect();
            assert_eq!(seen, ["1\talice\thello from us-east", "2\tbob\tretry-safe"]);
            assert!(tail.try_wait().unwrap().is_none(), "tail keeps streaming");
            let _ = tail.kill();
            let _ = tail.wait();
            continue;
        }
        let output = command.output().unwrap();
        assert_eq!(code(&output), 0, "spacectl {}: {}", args.join(" "), stderr(&output));
    }
}

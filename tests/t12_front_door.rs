//! What every request meets at the front door, seen from outside: errors
//! come back as typed kinds (spacectl's exit codes follow them), and a
//! cluster refuses requests meant for another one; `spaceraft dev` refuses
//! to go on when its ports answer for another cluster.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ctl::{code, spacectl, stderr};
use common::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_a_quorum_exits_5_within_the_command_timeout() {
    let mut cluster = TestCluster::start().await;
    let survivor = cluster.node(3).addr.clone();
    let created = spacectl(&survivor, &["space", "create", "general", "--members", "alice"]);
    assert_eq!(code(&created), 0, "{}", stderr(&created));
    let posted = spacectl(&survivor, &["post", "general", "before", "--as", "alice"]);
    assert_eq!(code(&posted), 0, "{}", stderr(&posted));

    // --- phase: two of three regions die
    cluster.kill_node(1);
    cluster.kill_node(2);
    let command_timeout = Duration::from_secs(8);
    let started = Instant::now();
    let refused =
        spacectl(&survivor, &["post", "general", "after", "--as", "alice", "--command-timeout", "8s", "-o", "json"]);
    let took = started.elapsed();
    assert_eq!(code(&refused), 5, "no quorum is exit code 5: {}", stderr(&refused));
    assert!(took < command_timeout + Duration::from_secs(3), "took {took:?}, over the command timeout");
    assert!(stderr(&refused).contains("quorum"), "{}", stderr(&refused));

    // --- phase: a region comes back, the post goes through
    cluster.start_node(2);
    let posted = spacectl(&survivor, &["post", "general", "after", "--as", "alice", "--command-timeout", "30s"]);
    assert_eq!(code(&posted), 0, "{}", stderr(&posted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_refuses_requests_meant_for_another() {
    let ours = TestCluster::start().await;
    let theirs = TestCluster::start().await;
    let (our_id, their_id) = (common::cluster_id(&ours), common::cluster_id(&theirs));
    assert_ne!(our_id, their_id, "every bootstrap makes a new cluster id");
    for node in 2..=3 {
        // Every node keeps the id it learned from its peers.
        let data_dir = ours.node(node).data_dir.clone();
        let kept = common::wait_until_blocking(Duration::from_secs(10), "the node keeps its cluster id", || {
            spaceraft::wire::read_cluster_id(&data_dir).unwrap().ok_or("no cluster-id file yet")
        });
        assert_eq!(kept, our_id, "node {node}");
    }

    let create = ["space", "create", "general", "--members", "alice", "--cluster-id", &our_id];
    let created = spacectl(&ours.node(1).addr, &create);
    assert_eq!(code(&created), 0, "{}", stderr(&created));
    let refused = spacectl(&theirs.node(1).addr, &create);
    assert_eq!(code(&refused), 1, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("another cluster") || stderr(&refused).contains(&their_id),
        "{}",
        stderr(&refused)
    );
    let listed = spacectl(&theirs.node(1).addr, &["space", "list", "-o", "json"]);
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("general"), "nothing was created there");
    let malformed = spacectl(&ours.node(1).addr, &["space", "list", "--cluster-id", "not-an-id"]);
    assert_eq!(code(&malformed), 2, "{}", stderr(&malformed));
}

/// A single bootstrapped node at `addr`: another cluster, in the way.
fn start_foreign_node(dir: &std::path::Path, addr: &str) -> std::process::Child {
    let config = dir.join("foreign.toml");
    common::write_config(&config, 1, addr, &dir.join("foreign-data"), &[(1, addr.to_string())], "");
    let log = std::fs::File::create(dir.join("foreign.log")).unwrap();
    Command::new(common::spaceraft_bin())
        .args(["node", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the foreign node")
}

/// Runs `spaceraft dev` until it exits (it must, here), within a deadline.
fn run_dev(data_dir: &std::path::Path, base_port: u16) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(common::spaceraft_bin())
        .args(["dev", "--data-dir"])
        .arg(data_dir)
        .args(["--base-port", &base_port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spaceraft dev");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&output.stderr).to_string() + &String::from_utf8_lossy(&output.stdout);
            return (status, text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("spaceraft dev went on: {}", String::from_utf8_lossy(&output.stdout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_refuses_to_go_on_when_another_cluster_answers_its_ports() {
    let dir = tempfile::tempdir().unwrap();
    let base_port = loop {
        // Three node ports in a row, free a moment ago.
        let port = common::free_ports(1)[0];
        let all_free = (0..3u16).all(|offset| std::net::TcpListener::bind(("127.0.0.1", port + offset)).is_ok());
        if port < 60_000 && all_free {
            break port;
        }
    };
    let foreign_addr = format!("127.0.0.1:{base_port}");
    let mut foreign = start_foreign_node(dir.path(), &foreign_addr);
    common::wait_until_blocking(Duration::from_secs(20), "the foreign node answers", || {
        let health = spacectl(&foreign_addr, &["cluster", "health"]);
        if code(&health) == 0 {
            Ok(())
        } else {
            Err(stderr(&health))
        }
    });

    // --- phase: first run: dev's first node cannot take its port
    let data_dir = dir.path().join("dev");
    let (status, said) = run_dev(&data_dir, base_port);
    assert!(!status.success(), "dev went on: {said}");
    assert!(said.contains("node 1"), "{said}");

    // --- phase: a run on a data directory that knows its cluster
    spaceraft::wire::write_cluster_id(&data_dir.join("node-1"), "00000000000000aa").unwrap();
    let (status, said) = run_dev(&data_dir, base_port);
    assert!(!status.success(), "dev went on: {said}");
    assert!(said.contains("another cluster") || said.contains("node 1"), "{said}");

    // Nothing was created on the foreign cluster.
    let listed = spacectl(&foreign_addr, &["space", "list", "-o", "json"]);
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("general"), "dev created general on a foreign cluster");
    let _ = foreign.kill();
    let _ = foreign.wait();
}

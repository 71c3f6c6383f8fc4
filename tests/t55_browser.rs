//! The gateway's web page in a real headless browser (Debian's chromium,
//! which `.ci/run` installs when missing), driven over the Chrome DevTools
//! Protocol: two pages on two regions' gateways; one posts, the other shows
//! the message, and both show the same messages in the same order; when a
//! page's gateway dies, the page moves to another gateway and misses nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::gateway::TEST_UPSTREAM;
use common::{create_space, TestCluster};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);

fn find_chromium() -> String {
    for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
        if let Ok(output) = Command::new("which").arg(name).output() {
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).trim().to_string();
            }
        }
    }
    panic!("no chromium found: the browser test needs it (.ci/run installs Debian's chromium; or apt-get install chromium)");
}

/// A headless chromium and a DevTools connection to it.
struct Browser {
    process: Child,
    _profile: tempfile::TempDir,
    devtools: common::gateway::Ws,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Browser {
    async fn launch() -> Browser {
        Self::launch_with(&[]).await
    }

    async fn launch_with(more_args: &[&str]) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut process = Command::new(find_chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .args(more_args)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // Chromium prints the DevTools address on stderr.
        let stderr = process.stderr.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = sender.send(url.trim().to_string());
                }
            }
        });
        let url = receiver.recv_timeout(WAIT).expect("chromium printed its DevTools address");
        let (devtools, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("connect to DevTools");
        Browser { process, _profile: profile, devtools, next_id: 0 }
    }

    /// Sends a CDP command and waits for its answer.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.devtools.send(Message::text(command.to_string())).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.devtools.next())
                .await
                .expect("DevTools answer")
                .unwrap()
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method} failed: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Opens a page; returns its DevTools session.
    async fn open(&mut self, url: &str) -> String {
        let target = self.call(None, "Target.createTarget", json!({"url": url})).await;
        let attached =
            self.call(None, "Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true})).await;
        attached["sessionId"].as_str().unwrap().to_string()
    }

    /// Evaluates a JavaScript expression in a page; returns its value.
    async fn eval(&mut self, session: &str, expression: &str) -> Value {
        let result = self
            .call(Some(session), "Runtime.evaluate", json!({"expression": expression, "returnByValue": true}))
            .await;
        result["result"]["value"].clone()
    }

    /// Polls an expression until it is true.
    async fn wait_true(&mut self, session: &str, expression: &str, what: &str) {
        common::wait_until(WAIT, what, async || match self.eval(session, expression).await {
            Value::Bool(true) => Ok(()),
            value => Err(value),
        })
        .await
    }
}

const SHOWN_MESSAGES: &str =
    "JSON.stringify([...document.querySelectorAll('#messages .message')].map(m => [m.dataset.seq, m.innerText]))";

fn page_shows(text: &str) -> String {
    format!(
        "document.querySelector('#messages') !== null && document.querySelector('#messages').innerText.includes({})",
        json!(text)
    )
}

async fn post_from(browser: &mut Browser, session: &str, text: &str) {
    let script = format!(
        "document.querySelector('#spaces [data-space=\"general\"]').click(); \
         document.querySelector('#body').value = {}; document.querySelector('#send').click(); true",
        json!(text)
    );
    assert_eq!(browser.eval(session, &script).await, json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pages_on_two_regions_see_each_others_messages_in_the_same_order() {
    let mut cluster = TestCluster::start().await;
    cluster.start_gateways(TEST_UPSTREAM).await;
    create_space(&cluster, 1, "general", &["alice", "bob"]).await;
    let mut browser = Browser::launch().await;

    // --- phase: alice on us-east's page, bob on eu-west's
    let alice = browser.open(&format!("http://{}/?user=alice", cluster.gateways[0].http)).await;
    let bob = browser.open(&format!("http://{}/?user=bob", cluster.gateways[1].http)).await;
    chat_both_ways(&mut browser, &alice, &bob, &cluster).await;

    // --- phase: alice's gateway dies; her page moves to another gateway and
    // carries on with no gap
    cluster.kill_gateway(0);
    post_from(&mut browser, &bob, "after us-east's gateway died").await;
    browser
        .wait_true(&alice, &page_shows("after us-east's gateway died"), "alice's page follows on another gateway")
        .await;
    let status = browser.eval(&alice, "document.querySelector('#status').innerText").await;
    assert!(status.as_str().is_some_and(|s| s.contains("connected to") && !s.contains("us-east")), "{status}");
    let shown_by_alice = browser.eval(&alice, SHOWN_MESSAGES).await;
    let alice_list: Vec<(String, String)> = serde_json::from_str(shown_by_alice.as_str().unwrap()).unwrap();
    let seqs: Vec<&str> = alice_list.iter().map(|(seq, _)| seq.as_str()).collect();
    assert_eq!(seqs, ["1", "2", "3"]);
}

/// Both pages list `general`; alice posts and bob's page shows it, bob
/// answers and alice's shows it; both list the same messages in order.
async fn chat_both_ways(browser: &mut Browser, alice: &str, bob: &str, cluster: &TestCluster) {
    for (session, who) in [(alice, "alice"), (bob, "bob")] {
        browser
            .wait_true(
                session,
                "document.querySelector('#spaces [data-space=\"general\"]') !== null",
                &format!("{who} sees general"),
            )
            .await;
    }

    // --- phase: alice posts, bob's page shows it; then bob answers
    post_from(browser, alice, "hello from us-east").await;
    browser.wait_true(bob, &page_shows("hello from us-east"), "bob sees alice's message").await;
    post_from(browser, bob, "hi back from eu-west").await;
    browser.wait_true(alice, &page_shows("hi back from eu-west"), "alice sees bob's answer").await;
    browser.wait_true(bob, &page_shows("hi back from eu-west"), "bob sees his own message").await;

    // --- phase: both pages list the same messages in the same order
    let shown_by_alice = browser.eval(alice, SHOWN_MESSAGES).await;
    let shown_by_bob = browser.eval(bob, SHOWN_MESSAGES).await;
    let alice_list: Vec<(String, String)> = serde_json::from_str(shown_by_alice.as_str().unwrap()).unwrap();
    let bob_list: Vec<(String, String)> = serde_json::from_str(shown_by_bob.as_str().unwrap()).unwrap();
    assert_eq!(alice_list.len(), 2, "{alice_list:?}");
    assert_eq!(alice_list, bob_list);
    assert_eq!(alice_list[0].0, "1");
    assert!(alice_list[0].1.contains("hello from us-east"));
    assert_eq!(common::full_history(cluster, 3, "general").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_log_in_with_tokens_on_a_secured_cluster() {
    let mut cluster = TestCluster::start_secured("", "").await;
    cluster.start_gateways(TEST_UPSTREAM).await;
    create_space(&cluster, 1, "general", &["alice", "bob"]).await;
    let tls = cluster.tls.clone().unwrap();
    let signer = spaceraft::security::token::Signer::load(&spaceraft::security::certs::signing_key(&tls)).unwrap();
    let alice_token = signer.mint("alice", Duration::from_secs(600), false, None).unwrap();
    // The test's gateways have a CA the browser does not know.
    let mut browser = Browser::launch_with(&["--ignore-certificate-errors"]).await;

    // --- phase: alice's page brings her token; bob's logs in by name (the development login)
    let alice = browser.open(&format!("https://{}/?token={alice_token}", cluster.gateways[0].http)).await;
    let bob = browser.open(&format!("https://{}/?user=bob", cluster.gateways[1].http)).await;
    chat_both_ways(&mut browser, &alice, &bob, &cluster).await;
    // Each page is the user its token names.
    for (session, who) in [(&alice, "alice"), (&bob, "bob")] {
        let status = browser.eval(session, "document.querySelector('#status').title").await;
        assert_eq!(status, json!(format!("as {who}")));
    }
}

//! Several OS processes sharing one embedded broker file, as `stratus up` runs them: each message
//! of a group is claimed by exactly one process.
//!
//! The consumers are this test binary run again as child processes (selected with an
//! environment variable), so the claims really race across processes, not just across pools.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stratus_broker::{Broker, Message, Options};

const CHILD_URL: &str = "STRATUS_BROKER_TEST_CHILD_URL";
const TOPIC: &str = "order.created";
const GROUP: &str = "fulfilment";
const N: usize = 600;
const CHILDREN: usize = 3;

/// Only does something in a child process: consumes until idle, printing `got <id>` per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_consumer() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let broker = Broker::connect(&url, Options::default()).await.unwrap();
    let mut subscription = broker.subscribe(TOPIC, GROUP).await.unwrap();
    while let Ok(delivery) = tokio::time::timeout(Duration::from_secs(3), subscription.next()).await
    {
        let delivery = delivery.unwrap();
        assert_eq!(delivery.attempt, 1);
        println!("got {}", delivery.message.id);
        delivery.ack().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_one_file_claim_each_message_once() {
    if std::env::var(CHILD_URL).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("broker.db").display());
    let broker = Broker::connect(&url, Options::default()).await.unwrap();
    drop(broker.subscribe(TOPIC, GROUP).await.unwrap()); // the group exists before any publish
    let children: Vec<_> = (0..CHILDREN)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["child_process_consumer", "--exact", "--nocapture"])
                .env(CHILD_URL, &url)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("starting a consumer process")
        })
        .collect();
    // Publish while the children consume, so claims race with publishes too.
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..N {
        let message = Message::json(&serde_json::json!({"order": i})).unwrap();
        broker.publish(TOPIC, &message).await.unwrap();
        ids.push(message.id);
    }
    let published = started.elapsed();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_process = Vec::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "a consumer process failed");
        let text = String::from_utf8(output.stdout).unwrap();
        let got: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("got "))
            .collect();
        per_process.push(got.len());
        for id in got {
            *counts.entry(id.to_string()).or_default() += 1;
        }
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "claimed by more than one process: {twice:?}"
    );
    assert_eq!(counts.len(), N, "every message consumed");
    assert!(ids.iter().all(|id| counts.contains_key(id)));
    assert!(
        per_process.iter().filter(|n| **n > 0).count() >= 2,
        "the processes shared the work: {per_process:?}"
    );
    eprintln!(
        "sqlite, {CHILDREN} consumer processes: published {N} in {published:?} ({:.0}/s); consumed per process {per_process:?}",
        N as f64 / published.as_secs_f64()
    );
}

/// Every local process opens the broker file as it starts, and `stratus up` starts them together:
/// the first opens create the file and switch it to WAL at the same moment. SQLite answers that
/// race with an immediate "database is locked" (the busy timeout does not cover a journal-mode
/// change), which must be waited out, not turned into a process that fails to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_handles_opening_a_new_file_at_once_all_succeed() {
    if std::env::var(CHILD_URL).is_ok() {
        return;
    }
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("broker.db").display());
        let opens = (0..6).map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Broker::connect(&url, Options::default()).await })
        });
        for open in futures_util::future::join_all(opens).await {
            if let Err(error) = open.unwrap() {
                panic!("round {round}: opening a new broker file failed: {error}");
            }
        }
    }
}

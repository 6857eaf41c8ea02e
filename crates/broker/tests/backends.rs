//! The broker's contract, checked with the same test bodies against both backends: the embedded
//! SQLite queue and NATS JetStream (a real `nats-server`: where it is not installed the NATS
//! tests are reported ignored, under CI they fail).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use stratus_broker::{
    dlq_headers, dlq_topic, Broker, Delivery, Message, Options, StartAt, Subscription,
};
use stratus_testing::servers::Nats;
use stratus_testing::{Need, Test};

const TOPIC: &str = "payment.completed";
/// Long enough for a busy 2-core machine; every wait ends as soon as its message arrives.
const PATIENCE: Duration = Duration::from_secs(20);

/// Where the broker under test lives.
struct Env {
    dir: tempfile::TempDir,
    nats: Option<Nats>,
}

impl Env {
    fn sqlite() -> Env {
        Env {
            dir: tempfile::tempdir().expect("a temp dir"),
            nats: None,
        }
    }

    /// On a nats-server of its own (the tests that use it declare `Need::Nats`).
    fn nats() -> Env {
        Env {
            dir: tempfile::tempdir().expect("a temp dir"),
            nats: Some(Nats::start()),
        }
    }

    fn url(&self) -> String {
        match &self.nats {
            Some(server) => server.url(),
            None => format!("sqlite://{}", self.dir.path().join("broker.db").display()),
        }
    }

    /// A new, independent handle: for SQLite its own connection pool on the same file, as another
    /// process would have; for NATS its own connection.
    async fn open(&self, options: Options) -> Broker {
        Broker::connect(&self.url(), options)
            .await
            .expect("connecting to the broker")
    }

    /// Restarts the NATS server on the same store; the SQLite file needs nothing.
    fn restart(&mut self) {
        if let Some(server) = &mut self.nats {
            server.restart();
        }
    }
}

fn options() -> Options {
    Options::default()
}

async fn recv(subscription: &mut Subscription) -> Delivery {
    tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("a message within the patience")
        .expect("receiving")
}

async fn nothing_for(subscription: &mut Subscription, wait: Duration) {
    if let Ok(delivery) = tokio::time::timeout(wait, subscription.next()).await {
        panic!("expected nothing, got {delivery:?}");
    }
}

async fn publish_n(broker: &Broker, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let message = Message::json(&serde_json::json!({"payment": i})).unwrap();
        broker.publish(TOPIC, &message).await.expect("publishing");
        ids.push(message.id);
    }
    ids
}

/// Pub-sub: each group gets every message.
async fn fan_out_to_every_group(env: Env) {
    let broker = env.open(options()).await;
    let mut notifications = broker.subscribe(TOPIC, "notifications").await.unwrap();
    let mut orders = broker.subscribe(TOPIC, "orders").await.unwrap();
    let ids = publish_n(&broker, 10).await;
    for subscription in [&mut notifications, &mut orders] {
        let mut got = Vec::new();
        for _ in 0..10 {
            let delivery = recv(subscription).await;
            assert_eq!(delivery.attempt, 1);
            assert_eq!(delivery.topic, TOPIC);
            got.push(delivery.message.id.clone());
            delivery.ack().await.unwrap();
        }
        got.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(got, want);
        nothing_for(subscription, Duration::from_millis(300)).await;
    }
}

/// Consumes with `subscription` until it has been idle for `idle`, acking everything (after a
/// little work, so the other consumers get a share).
async fn drain(subscription: Subscription, idle: Duration, work: Duration) -> Vec<String> {
    drain_timed(subscription, idle, work).await.0
}

/// [`drain`], also telling when the last message was acked.
async fn drain_timed(
    mut subscription: Subscription,
    idle: Duration,
    work: Duration,
) -> (Vec<String>, Instant) {
    let mut ids = Vec::new();
    let mut last = Instant::now();
    while let Ok(delivery) = tokio::time::timeout(idle, subscription.next()).await {
        let delivery = delivery.expect("receiving");
        assert_eq!(delivery.attempt, 1, "prompt acks mean no redelivery");
        ids.push(delivery.message.id.clone());
        if !work.is_zero() {
            tokio::time::sleep(work).await;
        }
        delivery.ack().await.expect("acking");
        last = Instant::now();
    }
    (ids, last)
}

/// Work queue: two instances of one group share the messages, each message going to one.
async fn work_queue_shares_within_a_group(env: Env) {
    let (one, two) = (env.open(options()).await, env.open(options()).await);
    let first = one.subscribe(TOPIC, "workers").await.unwrap();
    let second = two.subscribe(TOPIC, "workers").await.unwrap();
    let ids = publish_n(&one, 40).await;
    let idle = Duration::from_secs(3);
    let work = Duration::from_millis(10);
    let (a, b) = tokio::join!(drain(first, idle, work), drain(second, idle, work));
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both instances got work: {} and {}",
        a.len(),
        b.len()
    );
    let all: Vec<&String> = a.iter().chain(&b).collect();
    let unique: BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), 40, "each message once");
    assert_eq!(unique, ids.iter().collect());
}

/// A message that is not acked within the visibility timeout comes back, with the next attempt.
async fn redelivers_after_the_visibility_timeout(env: Env) {
    let broker = env
        .open(Options {
            visibility_timeout: Duration::from_secs(1),
            ..options()
        })
        .await;
    let mut subscription = broker.subscribe(TOPIC, "g").await.unwrap();
    let ids = publish_n(&broker, 1).await;
    let first = recv(&mut subscription).await;
    let taken = Instant::now();
    assert_eq!((first.attempt, &first.message.id), (1, &ids[0]));
    drop(first); // as if the consumer had crashed
    let again = recv(&mut subscription).await;
    assert_eq!((again.attempt, &again.message.id), (2, &ids[0]));
    assert!(
        taken.elapsed() >= Duration::from_millis(800),
        "not before the timeout"
    );
    again.ack().await.unwrap();
    nothing_for(&mut subscription, Duration::from_millis(1500)).await;
}

/// A consumer still at work extends its lease, and the message is not redelivered meanwhile.
async fn extending_the_lease_holds_off_redelivery(env: Env) {
    let broker = env
        .open(Options {
            visibility_timeout: Duration::from_secs(2),
            ..options()
        })
        .await;
    let mut subscription = broker.subscribe(TOPIC, "g").await.unwrap();
    publish_n(&broker, 1).await;
    let delivery = recv(&mut subscription).await;
    // 2.4 s in all, past the timeout, yet each extension comes well within it.
    for _ in 0..4 {
        nothing_for(&mut subscription, Duration::from_millis(600)).await;
        delivery.extend_lease().await.unwrap();
    }
    delivery.ack().await.unwrap();
    nothing_for(&mut subscription, Duration::from_millis(2500)).await;
}

/// A nack asks for a retry after a delay.
async fn nack_retries_after_the_delay(env: Env) {
    let broker = env.open(options()).await;
    let mut subscription = broker.subscribe(TOPIC, "g").await.unwrap();
    let ids = publish_n(&broker, 1).await;
    let first = recv(&mut subscription).await;
    let nacked = Instant::now();
    first.nack(Duration::from_millis(700)).await.unwrap();
    let again = recv(&mut subscription).await;
    assert!(
        nacked.elapsed() >= Duration::from_millis(600),
        "retried after {:?}",
        nacked.elapsed()
    );
    assert_eq!((again.attempt, &again.message.id), (2, &ids[0]));
    again.ack().await.unwrap();
}

/// A message that keeps failing goes to `<topic>.dlq` after `max_attempts`, and is not retried.
async fn poison_goes_to_the_dlq_after_max_attempts(env: Env) {
    let broker = env
        .open(Options {
            max_attempts: 3,
            ..options()
        })
        .await;
    let mut dead = broker
        .subscribe(&dlq_topic(TOPIC), "operators")
        .await
        .unwrap();
    let mut subscription = broker.subscribe(TOPIC, "payments").await.unwrap();
    let poison = Message::new(&b"{\"poison\":true}"[..]).with_header("tenant", "acme");
    broker.publish(TOPIC, &poison).await.unwrap();
    for attempt in 1..=3 {
        let delivery = recv(&mut subscription).await;
        assert_eq!(
            (delivery.attempt, &delivery.message.id),
            (attempt, &poison.id)
        );
        delivery.nack(Duration::ZERO).await.unwrap();
    }
    let letter = recv(&mut dead).await;
    assert_eq!(letter.message.payload, poison.payload);
    assert_eq!(
        letter.message.header(dlq_headers::ORIGINAL_ID),
        Some(poison.id.as_str())
    );
    assert_eq!(
        letter.message.header(dlq_headers::ORIGINAL_TOPIC),
        Some(TOPIC)
    );
    assert_eq!(letter.message.header(dlq_headers::GROUP), Some("payments"));
    assert_eq!(letter.message.header(dlq_headers::ATTEMPTS), Some("3"));
    assert_eq!(letter.message.header("tenant"), Some("acme"));
    assert_ne!(letter.message.id, poison.id);
    letter.ack().await.unwrap();
    nothing_for(&mut subscription, Duration::from_millis(1000)).await;
}

/// The last attempt timing out (no nack at all) dead-letters too; and a dead-letter reader that
/// subscribes afterwards can still read it from the start.
async fn expired_last_attempt_goes_to_the_dlq(env: Env) {
    let broker = env
        .open(Options {
            max_attempts: 2,
            visibility_timeout: Duration::from_secs(1),
            ..options()
        })
        .await;
    let mut subscription = broker.subscribe(TOPIC, "payments").await.unwrap();
    let ids = publish_n(&broker, 1).await;
    for attempt in 1..=2 {
        let delivery = recv(&mut subscription).await;
        assert_eq!(delivery.attempt, attempt);
        drop(delivery);
    }
    // Keeps the subscription polling past the last lease: it moves the message, never hands it out.
    nothing_for(&mut subscription, Duration::from_millis(2500)).await;
    let mut dead = broker
        .subscribe_at(&dlq_topic(TOPIC), "operators", StartAt::Earliest)
        .await
        .unwrap();
    let letter = recv(&mut dead).await;
    assert_eq!(
        letter.message.header(dlq_headers::ORIGINAL_ID),
        Some(ids[0].as_str())
    );
    assert_eq!(letter.message.header(dlq_headers::ATTEMPTS), Some("2"));
    letter.ack().await.unwrap();
}

/// Published messages survive the broker handle going away and (NATS) the server restarting.
async fn messages_survive_a_restart(mut env: Env) {
    let broker = env.open(options()).await;
    drop(broker.subscribe(TOPIC, "g").await.unwrap()); // registers the group
    let ids = publish_n(&broker, 20).await;
    drop(broker);
    env.restart();
    let broker = env.open(options()).await;
    let mut subscription = broker.subscribe(TOPIC, "g").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        let delivery = recv(&mut subscription).await;
        got.push(delivery.message.id.clone());
        delivery.ack().await.unwrap();
    }
    got.sort();
    let mut want = ids;
    want.sort();
    assert_eq!(got, want);
}

/// Headers, the W3C traceparent above all, arrive as sent; so do the id, payload and timestamp.
async fn headers_and_traceparent_round_trip(env: Env) {
    let broker = env.open(options()).await;
    let mut subscription = broker.subscribe(TOPIC, "g").await.unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let sent = Message::json(&serde_json::json!({"order": "o-1", "amount": 1299}))
        .unwrap()
        .with_traceparent(traceparent)
        .with_header("x-request-id", "r-42");
    broker.publish(TOPIC, &sent).await.unwrap();
    let delivery = recv(&mut subscription).await;
    assert_eq!(delivery.message, sent);
    assert_eq!(delivery.message.traceparent(), Some(traceparent));
    let body: serde_json::Value = delivery.message.decode().unwrap();
    assert_eq!(body["amount"], 1299);
    delivery.ack().await.unwrap();
}

/// Publishing the same message twice (an outbox retrying) delivers it once.
async fn publishing_is_idempotent(env: Env) {
    let broker = env.open(options()).await;
    let mut subscription = broker.subscribe(TOPIC, "g").await.unwrap();
    let message = Message::new(&b"{}"[..]);
    broker.publish(TOPIC, &message).await.unwrap();
    broker.publish(TOPIC, &message).await.unwrap();
    recv(&mut subscription).await.ack().await.unwrap();
    nothing_for(&mut subscription, Duration::from_millis(700)).await;
}

/// A batch is published whole, in order, and fans out like single messages.
async fn publish_all_stores_a_batch(env: Env) {
    let broker = env.open(options()).await;
    let subscription = broker.subscribe(TOPIC, "g").await.unwrap();
    let mut deliveries = std::pin::pin!(subscription.into_stream());
    let batch: Vec<Message> = (0..50)
        .map(|i| Message::json(&serde_json::json!({"payment": i})).unwrap())
        .collect();
    broker.publish_all(TOPIC, &batch).await.unwrap();
    for sent in &batch {
        let delivery = tokio::time::timeout(PATIENCE, deliveries.next())
            .await
            .expect("a message within the patience")
            .expect("the stream goes on")
            .expect("receiving");
        assert_eq!(&delivery.message, sent, "in publishing order");
        delivery.ack().await.unwrap();
    }
}

/// A subscription that is running when the broker restarts carries on afterwards (transient
/// errors in between are reported and may be retried).
async fn a_live_subscription_survives_a_restart(mut env: Env) {
    let broker = env.open(options()).await;
    let mut subscription = broker.subscribe(TOPIC, "g").await.unwrap();
    publish_n(&broker, 1).await;
    recv(&mut subscription).await.ack().await.unwrap();
    env.restart();
    let deadline = Instant::now() + PATIENCE;
    let message = Message::new(&b"{}"[..]);
    while let Err(error) = broker.publish(TOPIC, &message).await {
        assert!(
            Instant::now() < deadline,
            "publishing never worked again: {error}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, subscription.next()).await {
            Ok(Ok(delivery)) => {
                assert_eq!(delivery.message.id, message.id);
                delivery.ack().await.unwrap();
                break;
            }
            Ok(Err(stratus_broker::Error::Closed)) => panic!("the subscription ended"),
            Ok(Err(error)) => eprintln!("transient: {error}"),
            Err(_) => panic!("nothing received after the restart"),
        }
    }
}

/// A new group starts with the messages published after its first subscription.
async fn a_new_group_starts_at_new_messages(env: Env) {
    let broker = env.open(options()).await;
    let before = publish_n(&broker, 1).await;
    let mut subscription = broker.subscribe(TOPIC, "late").await.unwrap();
    let after = publish_n(&broker, 1).await;
    let delivery = recv(&mut subscription).await;
    assert_eq!(delivery.message.id, after[0]);
    assert_ne!(delivery.message.id, before[0]);
    delivery.ack().await.unwrap();
    nothing_for(&mut subscription, Duration::from_millis(500)).await;
}

/// Two handles (for SQLite: two pools on one file, as two processes would have), two groups,
/// two consumers per group: with prompt acks every message is delivered exactly once per group.
async fn concurrent_consumers_claim_each_message_once_per_group(env: Env) {
    const N: usize = 500;
    let (one, two) = (env.open(options()).await, env.open(options()).await);
    let mut consumers = Vec::new();
    for group in ["audit", "email"] {
        for broker in [&one, &two] {
            consumers.push((group, broker.subscribe(TOPIC, group).await.unwrap()));
        }
    }
    let started = Instant::now();
    let (a, b) = tokio::join!(publish_n(&one, N / 2), publish_n(&two, N / 2));
    let published = started.elapsed();
    let ids: BTreeSet<String> = a.into_iter().chain(b).collect();
    let tasks: Vec<_> = consumers
        .into_iter()
        .map(|(group, subscription)| {
            tokio::spawn(async move {
                let (ids, last) =
                    drain_timed(subscription, Duration::from_secs(3), Duration::ZERO).await;
                (group, ids, last)
            })
        })
        .collect();
    let mut per_group: HashMap<&str, Vec<String>> = HashMap::new();
    let mut finished = started;
    for task in tasks {
        let (group, got, last) = task.await.unwrap();
        per_group.entry(group).or_default().extend(got);
        finished = finished.max(last);
    }
    let consumed = finished - started;
    for (group, got) in &per_group {
        let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
        for id in got {
            *counts.entry(id).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{group}: delivered more than once: {twice:?}"
        );
        assert_eq!(counts.len(), N, "{group}: every message");
        assert!(counts.keys().all(|id| ids.contains(*id)));
    }
    eprintln!(
        "{}: published {N} in {published:?} ({:.0}/s); all {} deliveries (2 groups) acked {consumed:?} after the start ({:.0}/s)",
        one.backend_name(),
        N as f64 / published.as_secs_f64(),
        2 * N,
        (2 * N) as f64 / consumed.as_secs_f64(),
    );
}

/// Each contract test twice: `sqlite::<name>` on the embedded queue and `nats::<name>` on a
/// nats-server of its own.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        vec![
            $(
                Test::new(concat!("sqlite::", stringify!($name)), || $name(Env::sqlite()))
                    .worker_threads(2),
            )*
            $(
                Test::new(concat!("nats::", stringify!($name)), || $name(Env::nats()))
                    .worker_threads(2)
                    .needs(&[Need::Nats]),
            )*
        ]
    };
}

/// The embedded backend deletes messages every group has finished with once they are older than
/// the retention, and keeps the ones a group still needs.
async fn sqlite_prunes_finished_messages_past_the_retention() {
    let env = Env::sqlite();
    let broker = env
        .open(Options {
            retention: Duration::from_millis(1),
            ..options()
        })
        .await;
    let mut fast = broker.subscribe(TOPIC, "fast").await.unwrap();
    let ids = publish_n(&broker, 2).await;
    for _ in 0..2 {
        recv(&mut fast).await.ack().await.unwrap();
    }
    let mut slow = broker.subscribe(TOPIC, "slow").await.unwrap();
    let pending = publish_n(&broker, 1).await;
    recv(&mut fast).await.ack().await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    nothing_for(&mut fast, Duration::from_millis(300)).await; // idle: prunes
    let mut late = broker
        .subscribe_at(TOPIC, "late", StartAt::Earliest)
        .await
        .unwrap();
    let delivery = recv(&mut late).await;
    assert_eq!(
        delivery.message.id, pending[0],
        "only the message `slow` still needs"
    );
    assert!(!ids.contains(&delivery.message.id));
    nothing_for(&mut late, Duration::from_millis(300)).await;
    assert_eq!(recv(&mut slow).await.message.id, pending[0]);
}

/// A NATS server without JetStream cannot keep messages: an error at connect that says why.
async fn nats_without_jetstream_is_an_error() {
    let server = Nats::start_without_jetstream();
    let error = Broker::connect(&server.url(), options())
        .await
        .err()
        .expect("an error");
    assert!(error.to_string().contains("JetStream"), "{error}");
}

/// A configured NATS that is not there is an error at connect, not a fallback to SQLite.
async fn unreachable_nats_is_an_error() {
    let url = format!("nats://127.0.0.1:{}", stratus_testing::free_port());
    let started = Instant::now();
    let error = Broker::connect(&url, options())
        .await
        .err()
        .expect("an error");
    assert!(
        matches!(error, stratus_broker::Error::Connect { .. }),
        "{error}"
    );
    assert!(error.to_string().contains(&url), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

fn main() -> std::process::ExitCode {
    let mut tests = on_both_backends!(
        fan_out_to_every_group,
        work_queue_shares_within_a_group,
        redelivers_after_the_visibility_timeout,
        nack_retries_after_the_delay,
        extending_the_lease_holds_off_redelivery,
        poison_goes_to_the_dlq_after_max_attempts,
        expired_last_attempt_goes_to_the_dlq,
        messages_survive_a_restart,
        headers_and_traceparent_round_trip,
        publishing_is_idempotent,
        a_new_group_starts_at_new_messages,
        publish_all_stores_a_batch,
        a_live_subscription_survives_a_restart,
        concurrent_consumers_claim_each_message_once_per_group,
    );
    tests.extend([
        Test::new(
            "sqlite_prunes_finished_messages_past_the_retention",
            sqlite_prunes_finished_messages_past_the_retention,
        )
        .worker_threads(2),
        Test::new(
            "nats_without_jetstream_is_an_error",
            nats_without_jetstream_is_an_error,
        )
        .needs(&[Need::Nats]),
        Test::new("unreachable_nats_is_an_error", unreachable_nats_is_an_error),
    ]);
    stratus_testing::run(tests)
}

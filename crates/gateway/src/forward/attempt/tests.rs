//! The driver against a scripted send step: no sockets, each attempt's outcome written down, so
//! every retry rule is checked on its own.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::route::routes::RouteTable;
use crate::upstream::balance::Balance;
use crate::upstream::instances::tests::pool_of;

/// What the scripted instance does with one attempt.
#[derive(Clone, Copy)]
enum Act {
    /// Answers with this status.
    Answer(u16),
    /// Refuses the connection: the request never left the gateway.
    Refuse,
    /// Takes the request, then breaks the connection: it may have seen it.
    Break,
    /// Never answers.
    Hang,
}

/// A send step that plays `script` in order and notes which instance each attempt went to.
struct Scripted {
    script: VecDeque<Act>,
    resendable: bool,
    sent_to: Vec<String>,
}

impl Scripted {
    fn new(resendable: bool, script: &[Act]) -> Self {
        Self {
            script: script.iter().copied().collect(),
            resendable,
            sent_to: Vec::new(),
        }
    }
}

impl SendStep for Scripted {
    type Response = u16;
    type Error = &'static str;

    fn resendable(&self) -> bool {
        self.resendable
    }

    async fn send(&mut self, endpoint: &Arc<Endpoint>) -> Sent<u16, &'static str> {
        self.sent_to.push(endpoint.id.clone());
        match self.script.pop_front().expect("an attempt past the script") {
            Act::Answer(status) => Sent::Answered {
                response: status,
                failing: status >= 500,
                retryable: matches!(status, 502..=504),
            },
            Act::Refuse => Sent::Failed {
                error: "connection refused",
                connect: true,
                reached: false,
            },
            Act::Break => Sent::Failed {
                error: "connection reset",
                connect: false,
                reached: true,
            },
            Act::Hang => std::future::pending().await,
        }
    }
}

/// A route to `catalog` that may retry `retries` times.
fn route(retries: u32) -> RouteTable {
    stratus_kit::metrics::install();
    RouteTable::parse(&format!(
        "[[routes]]\nprefix = \"/\"\nservice = \"catalog\"\nretries = {retries}\n"
    ))
    .unwrap()
}

/// Runs `step` against a round-robin pool of `ids` through the table's one route.
async fn drive(
    table: &RouteTable,
    pool: &InstancePool,
    timeout: Duration,
    step: &mut Scripted,
) -> (Result<u16, u16>, u32) {
    let route = &table.routes[0];
    assert_eq!(route.balance, Balance::default());
    let attempts = Attempts {
        route,
        pool,
        group: Group::Any,
        key: None,
        timeout,
    };
    let mut retries = 0;
    let outcome = attempts
        .run(step, &mut retries)
        .await
        .map(|(status, _)| status)
        .map_err(|problem| problem.status().as_u16());
    (outcome, retries)
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_instance_for_any_method() {
    let table = route(1);
    let pool = pool_of(&[("a", 1), ("b", 1)]);
    // Not resendable (a POST): a refused connection never reached the instance, so it is safe.
    let mut step = Scripted::new(false, &[Act::Refuse, Act::Answer(200)]);
    let (outcome, retries) = drive(&table, &pool, SECOND, &mut step).await;
    assert_eq!(outcome, Ok(200));
    assert_eq!(retries, 1);
    assert_ne!(step.sent_to[0], step.sent_to[1], "the retry went elsewhere");
    let refused = pool.endpoints.iter().find(|e| e.id == step.sent_to[0]);
    assert!(
        refused.unwrap().is_down(),
        "a refused connection trips the breaker"
    );
}

#[tokio::test]
async fn a_request_the_instance_may_have_seen_is_not_sent_again_unless_resendable() {
    let table = route(1);
    let pool = pool_of(&[("a", 1), ("b", 1)]);
    let mut step = Scripted::new(false, &[Act::Break, Act::Answer(200)]);
    let (outcome, retries) = drive(&table, &pool, SECOND, &mut step).await;
    assert_eq!(outcome, Err(502));
    assert_eq!((retries, step.sent_to.len()), (0, 1));

    let mut step = Scripted::new(false, &[Act::Answer(503), Act::Answer(200)]);
    let (outcome, _) = drive(&table, &pool, SECOND, &mut step).await;
    assert_eq!(outcome, Ok(503), "a 503 to a POST is the client's to see");

    let mut step = Scripted::new(true, &[Act::Break, Act::Answer(200)]);
    let (outcome, retries) = drive(&table, &pool, SECOND, &mut step).await;
    assert_eq!(
        (outcome, retries),
        (Ok(200), 1),
        "an idempotent request goes again"
    );
}

#[tokio::test]
async fn no_retry_once_the_budget_is_spent() {
    let table = route(1);
    let pool = pool_of(&[("a", 1), ("b", 1)]);
    while table.routes[0].retry_budget.withdraw() {}
    let mut step = Scripted::new(true, &[Act::Refuse, Act::Answer(200)]);
    let (outcome, retries) = drive(&table, &pool, SECOND, &mut step).await;
    assert_eq!(outcome, Err(502));
    assert_eq!((retries, step.sent_to.len()), (0, 1));
}

#[tokio::test]
async fn retries_stop_at_the_routes_limit() {
    let table = route(2);
    let pool = pool_of(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
    let mut step = Scripted::new(true, &[Act::Answer(502); 4]);
    let (outcome, retries) = drive(&table, &pool, SECOND, &mut step).await;
    assert_eq!(outcome, Ok(502), "the last answer is relayed");
    assert_eq!((retries, step.sent_to.len()), (2, 3));
}

#[tokio::test]
async fn an_instance_whose_breaker_is_open_gets_nothing() {
    let table = route(1);
    let pool = pool_of(&[("a", 1), ("b", 1)]);
    pool.endpoints[0].trip();
    for _ in 0..4 {
        let mut step = Scripted::new(true, &[Act::Answer(200)]);
        assert_eq!(drive(&table, &pool, SECOND, &mut step).await.0, Ok(200));
        assert_eq!(step.sent_to, ["b"]);
    }
    // With no instance left to retry on, the client hears that there is none.
    let single = pool_of(&[("a", 1)]);
    let mut step = Scripted::new(true, &[Act::Refuse]);
    let (outcome, retries) = drive(&table, &single, SECOND, &mut step).await;
    assert_eq!((outcome, retries), (Err(503), 1));
}

#[tokio::test]
async fn the_timeout_is_per_try() {
    let table = route(1);
    let pool = pool_of(&[("a", 1), ("b", 1)]);
    let short = Duration::from_millis(50);
    let mut step = Scripted::new(true, &[Act::Hang, Act::Answer(200)]);
    let (outcome, retries) = drive(&table, &pool, short, &mut step).await;
    assert_eq!(
        (outcome, retries),
        (Ok(200), 1),
        "a hung instance costs one try"
    );

    let mut step = Scripted::new(false, &[Act::Hang, Act::Answer(200)]);
    let (outcome, retries) = drive(&table, &pool, short, &mut step).await;
    assert_eq!(
        (outcome, retries),
        (Err(504), 0),
        "not resent when not resendable"
    );

    // The one instance hangs: the retry finds no other, and the client still hears 504.
    let single = pool_of(&[("a", 1)]);
    let mut step = Scripted::new(true, &[Act::Hang]);
    let (outcome, retries) = drive(&table, &single, short, &mut step).await;
    assert_eq!((outcome, retries), (Err(504), 1));
    assert_eq!(
        single.endpoints[0].in_flight(),
        0,
        "the timed-out try is no longer in flight"
    );
}

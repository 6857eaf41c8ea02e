//! What each component says on `/metrics` is what README's metrics table says it says.
//!
//! One list drives it all: the table under "## Metrics" in README.md. The system runs as real
//! processes (every HTTP component), takes real traffic through the gateway (reads, logins, a
//! profile, an order through the saga, a catalog instance that refuses connections, and what
//! the mesh refuses: a call no intention allows, plaintext to an internal port, an instance
//! without its service's certificate), and
//! then every component is scraped where Prometheus would find it (the registry's
//! `/v1/prometheus/targets`, plus the registry itself). A family the table expects after that
//! traffic must be there (a counter or histogram with a count above zero, a gauge at all); a
//! family a component shows must be in the table for that component. The Grafana dashboard's
//! queries may name only families of the table.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::System;

/// The components with an HTTP port (`all` in the table); dns has none.
const COMPONENTS: &[&str] = &[
    "registry",
    "events",
    "auth",
    "catalog",
    "profile",
    "orders",
    "payments",
    "notifications",
    "gateway",
];

/// The table's *After* values this test brings about; `-` is documented only.
const DRIVEN: &[&str] = &[
    "start",
    "requests",
    "an order",
    "a dead instance",
    "a refusal",
];

/// One row of README's metrics table.
#[derive(Debug)]
struct Family {
    name: String,
    kind: String,
    components: Vec<String>,
    after: String,
}

/// README.md's metrics table: every row between its header and the first line after it that is
/// not a table row.
fn documented() -> Vec<Family> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let header = "| family | type | components | after | what it counts (labels) |";
    let table = readme
        .split_once(header)
        .unwrap_or_else(|| panic!("README.md has no metrics table starting {header}"))
        .1;
    let mut families = Vec::new();
    for line in table.lines().skip(2) {
        let Some(row) = line.strip_prefix('|') else {
            break;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(
            cells.len() >= 5,
            "a short row in README's metrics table: {line}"
        );
        let name = cells[0].trim_matches('`').to_string();
        let components: Vec<String> = if cells[2] == "all" {
            COMPONENTS.iter().map(|c| c.to_string()).collect()
        } else {
            cells[2]
                .split_whitespace()
                .map(|c| c.trim_matches('`').to_string())
                .collect()
        };
        for component in &components {
            assert!(
                COMPONENTS.contains(&component.as_str()),
                "README's metrics table: `{name}` names an unknown component {component}"
            );
        }
        let after = cells[3].to_string();
        assert!(
            after == "-" || DRIVEN.contains(&after.as_str()),
            "README's metrics table: `{name}` has After `{after}`: one of {DRIVEN:?} or -"
        );
        let kind = cells[1].to_string();
        assert!(
            ["counter", "gauge", "histogram"].contains(&kind.as_str()),
            "README's metrics table: `{name}` has type `{kind}`"
        );
        families.push(Family {
            name,
            kind,
            components,
            after,
        });
    }
    assert!(
        families.len() > 20,
        "README's metrics table has {} rows",
        families.len()
    );
    families
}

/// One family as scraped: its `# TYPE` and its count (the sum of a counter's series, of a
/// histogram's `_count` series, or a gauge's number of series).
#[derive(Debug, Default)]
struct Scraped {
    kind: String,
    count: f64,
}

/// Prometheus's text format, by family.
fn parse(text: &str) -> BTreeMap<String, Scraped> {
    let mut families: BTreeMap<String, Scraped> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                panic!("a bad TYPE line: {line}");
            };
            families.entry(name.to_string()).or_default().kind = kind.to_string();
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("a sample line");
        let name = &line[..name_end];
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("a sample without a value: {line}"));
        let (family, counted) = match name.strip_suffix("_count") {
            Some(base) if families.get(base).is_some_and(|f| f.kind == "histogram") => {
                (base, value)
            }
            _ => match ["_bucket", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
            {
                Some(base) if families.get(base).is_some_and(|f| f.kind == "histogram") => {
                    (base, 0.0)
                }
                _ => (name, value),
            },
        };
        let entry = families.entry(family.to_string()).or_default();
        entry.count += if entry.kind == "gauge" { 1.0 } else { counted };
    }
    families
}

/// Where each component's metrics are: the registry's Prometheus targets (as a Prometheus
/// would find them), and the registry itself, which is not registered.
async fn targets(system: &System) -> BTreeMap<String, String> {
    let groups = system
        .get_json(format!("{}/v1/prometheus/targets", system.registry_url()))
        .await;
    let mut targets = BTreeMap::new();
    for group in groups.as_array().expect("a list of target groups") {
        let component = group["labels"]["component"].as_str().expect("a component");
        let path = group["labels"]["__metrics_path__"]
            .as_str()
            .expect("a path");
        for target in group["targets"].as_array().expect("targets") {
            let url = format!(
                "{}://{}{path}",
                system.scheme(),
                target.as_str().expect("host:port")
            );
            let earlier = targets.insert(component.to_string(), url);
            assert!(earlier.is_none(), "two {component} targets: {groups}");
        }
    }
    targets.insert(
        "registry".into(),
        format!("{}/metrics", system.registry_url()),
    );
    targets
}

async fn scrape(system: &System, url: &str) -> BTreeMap<String, Scraped> {
    let response = system
        .internal()
        .get(url)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200, "{url}");
    parse(&response.text().await.expect("a body"))
}

/// What is wrong with one component's `/metrics` against the table: expected families missing
/// or without a count, families of the wrong type, families the table does not list for it.
fn mismatches(
    component: &str,
    documented: &[Family],
    scraped: &BTreeMap<String, Scraped>,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for family in documented
        .iter()
        .filter(|f| f.components.iter().any(|c| c == component))
    {
        match scraped.get(&family.name) {
            Some(seen) if seen.kind != family.kind => wrong.push(format!(
                "{component}: {} is a {}, README says {}",
                family.name, seen.kind, family.kind
            )),
            Some(seen) if family.after != "-" && seen.count <= 0.0 => wrong.push(format!(
                "{component}: {} has not counted anything (after {})",
                family.name, family.after
            )),
            None if family.after != "-" => wrong.push(format!(
                "{component}: {} is missing (after {})",
                family.name, family.after
            )),
            _ => {}
        }
    }
    for name in scraped.keys() {
        let listed = documented
            .iter()
            .any(|f| &f.name == name && f.components.iter().any(|c| c == component));
        if !listed {
            wrong.push(format!(
                "{component}: {name} is on /metrics but not in README's table for {component}"
            ));
        }
    }
    wrong
}

/// A port that refuses connections: bound, never listening, held until the test ends.
fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind");
    let port = socket.local_addr().expect("its address").port();
    (socket, port)
}

/// The traffic the table's `requests`, `an order` and `a dead instance` stand for.
async fn drive(system: &System) {
    let http = &system.http;
    let admin = system.admin_token().await;
    let customer = system.customer_token("metrics@example.com").await;

    // Reads, writes and the product cache (a miss, then hits; views written back).
    let product: Value = http
        .post(system.url("/api/catalog/products"))
        .bearer_auth(&admin)
        .json(&json!({"name": "Tea", "price_cents": 450, "stock": 100}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let product_id = product["id"].as_str().expect("a product id").to_string();
    system.products().await;
    for _ in 0..3 {
        let response = http
            .get(system.url(&format!("/api/catalog/products/{product_id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    // A profile: not there yet (a miss), written through the cache, then read from it.
    let response = http
        .get(system.url("/api/profile/me"))
        .bearer_auth(&customer)
        .send()
        .await
        .unwrap();
    assert!(
        response.status() == 200 || response.status() == 404,
        "GET profile: {}",
        response.status()
    );
    let response = http
        .put(system.url("/api/profile/me"))
        .bearer_auth(&customer)
        .json(&json!({"display_name": "Ann"}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "PUT profile: {}",
        response.status()
    );
    for _ in 0..2 {
        let response = http
            .get(system.url("/api/profile/me"))
            .bearer_auth(&customer)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    // An order through the saga: orders -> payments -> orders and notifications.
    let response = http
        .post(system.url("/api/orders"))
        .bearer_auth(&customer)
        .header("idempotency-key", "metrics-1")
        .json(&json!({"items": [{"product_id": product_id, "quantity": 2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "placing an order");
    let order: Value = response.json().await.unwrap();
    let order_id = order["id"].as_str().expect("an order id");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let order = system
            .http
            .get(system.url(&format!("/api/orders/{order_id}")))
            .bearer_auth(&customer)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        let notified = http
            .get(system.url("/api/notifications"))
            .bearer_auth(&customer)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        let notified = notified.as_array().is_some_and(|n| !n.is_empty());
        if order["status"] == "paid" && notified {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the order never became paid and notified: {order}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A catalog instance that refuses connections joins: the gateway's tries on it fail and are
/// retried on the live one, and its health checks take it out of rotation.
async fn a_dead_instance(system: &System) -> tokio::net::TcpSocket {
    let (socket, port) = refusing_port();
    system.register("catalog", "dead", port, json!({})).await;
    system.wait_gateway_sees("catalog", 2).await;
    for _ in 0..4 {
        let response = system
            .http
            .get(system.url("/api/catalog/products"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "a retry hides the dead instance");
    }
    socket
}

/// What the mesh refuses, once at every component (the table's `a refusal`): plaintext to its
/// port (a failed handshake), and a call from a service no intention lets in (403; the
/// registry, the sink and auth take every service and decide per request); and at the
/// gateway, an instance registered as `catalog` that has no certificate (its handshake fails,
/// and the request goes to another instance).
async fn refusals(system: &System) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let targets = targets(system).await;
    let intruder = support::mesh::client_as("intruder");
    for (component, url) in &targets {
        let authority = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .expect("host:port");
        let mut plain = tokio::net::TcpStream::connect(authority).await.unwrap();
        plain
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer).await;
        assert!(
            !String::from_utf8_lossy(&answer).contains("200 OK"),
            "{component} answered plaintext"
        );
        if !["registry", "events", "auth"].contains(&component.as_str()) {
            let refused = intruder.get(url).send().await.unwrap();
            assert_eq!(refused.status(), 403, "{component} let an intruder in");
        }
    }

    let impostor = support::backend::plain("impostor", Duration::ZERO).await;
    system
        // Checked by connecting (which succeeds), so only requests find it out.
        .register(
            "catalog",
            "impostor",
            impostor,
            json!({"health_check": "tcp"}),
        )
        .await;
    system.wait_gateway_sees("catalog", 3).await;
    let gateway_metrics = &targets["gateway"];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = system
            .http
            .get(system.url("/api/catalog/products"))
            .send()
            .await
            .unwrap();
        // One retry per request: a try on the impostor and one on the dead instance is a 502.
        assert!(
            [200, 502].contains(&response.status().as_u16()),
            "{}",
            response.status()
        );
        let metrics = system
            .internal()
            .get(gateway_metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("gateway_upstream_tls_failures_total{service=\"catalog\"}") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never counted its failed handshake with the impostor"
        );
    }
}

#[tokio::test]
async fn every_component_shows_the_families_readme_lists() {
    let documented = documented();
    let events_port = support::free_port();
    let sink = support::mesh::internal_url(events_port, "");
    let reporting = ["auth", "catalog", "gateway"].map(|c| (c, "STRATUS_EVENTS_URL", sink.clone()));
    let mut system = System::start_with(1, &reporting).await;
    let port = events_port.to_string();
    system.spawn("events", &[("PORT", port.as_str())]);
    system
        .wait_http_ok(&system.internal_url(events_port, "/readyz"))
        .await;
    system.wait_registered("events", 1).await;
    let shop = [
        ("profile", 1),
        ("orders", 1),
        ("payments", 1),
        ("notifications", 1),
    ];
    system
        .add_services(&shop, &[("STRATUS_EVENTS_URL", sink.as_str())])
        .await;

    drive(&system).await;
    let _dead = a_dead_instance(&system).await;
    refusals(&system).await;

    // Batches go out every 200 ms, product views every second, health checks every second:
    // scrape until everything is there, then report what is not.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (targets, wrong) = loop {
        let targets = targets(&system).await;
        let mut wrong = Vec::new();
        for component in COMPONENTS {
            match targets.get(*component) {
                Some(url) => {
                    let scraped = scrape(&system, url).await;
                    wrong.extend(mismatches(component, &documented, &scraped));
                }
                None => wrong.push(format!("{component} is not a Prometheus target")),
            }
        }
        if wrong.is_empty() || Instant::now() > deadline {
            break (targets, wrong);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        wrong.is_empty(),
        "/metrics disagrees with README's table:\n{}",
        wrong.join("\n")
    );
    let unexpected: BTreeSet<&String> = targets
        .keys()
        .filter(|c| !COMPONENTS.contains(&c.as_str()))
        .collect();
    assert!(unexpected.is_empty(), "targets {unexpected:?}");
}

/// An idle gateway whose routes name the gateway service (an edge in front of gateways)
/// health-checks the gateways: each must pass (the client port is checked by connecting: it has
/// no /healthz), and none may be counted as a failure.
#[tokio::test]
async fn an_idle_gateway_finds_every_gateway_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    // Only the services the route table names are health-checked.
    std::fs::write(
        &routes,
        "[[routes]]\nprefix = \"/edge\"\nservice = \"gateway\"\nauth = \"none\"\n",
    )
    .unwrap();
    let system = System::start_edge(Some(&routes)).await;
    system.wait_registered("gateway", 1).await;
    system.wait_gateway_sees("gateway", 1).await;
    // Two rounds of health checks (every second) take a failing instance out of rotation.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let admin = system.admin_url("");
    let upstreams = system.get_json(format!("{admin}/v1/upstreams")).await;
    let gateways = upstreams["services"]["gateway"]
        .as_array()
        .expect("the gateway among the upstreams");
    for gateway in gateways {
        assert_eq!(gateway["health_check"], "passing", "{gateway}");
        assert_eq!(gateway["check"], "tcp", "{gateway}");
    }
    let metrics = system
        .internal()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("gateway_health_check_failures_total"),
        "an idle system counts health-check failures:\n{metrics}"
    );
}

/// Every metric a dashboard panel queries is a family of README's table (a histogram's
/// `_bucket`, `_sum` and `_count` count as their family).
#[test]
fn the_dashboard_queries_only_documented_families() {
    let documented = documented();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/stratus.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).unwrap();
    let mut expressions = Vec::new();
    collect_expressions(&dashboard, &mut expressions);
    assert!(expressions.len() >= 10, "{} queries", expressions.len());
    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for expression in &expressions {
        for name in metric_names(expression) {
            let family = documented.iter().find(|f| {
                f.name == name
                    || (f.kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(f.name.as_str())))
            });
            match family {
                Some(family) => {
                    used.insert(family.name.clone());
                }
                None => unknown.push(format!("{name} in {expression}")),
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics README does not list:\n{}",
        unknown.join("\n")
    );
    for needed in [
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_retries_total",
        "gateway_upstream_failures_total",
        "http_server_request_duration_seconds",
        "broker_published_total",
        "cache_hits_total",
        "events_dropped_total",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
}

/// Every `expr` in the dashboard (panel targets and templating queries alike).
fn collect_expressions(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => into.push(expr.clone()),
                    _ => collect_expressions(value, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_expressions(v, into)),
        _ => {}
    }
}

/// The metric names in a PromQL expression: identifiers that are not functions (followed by
/// `(`), keywords, label names (inside `{}` and after `by`/`without`/`on`/`ignoring`), strings
/// or durations, nor Grafana's `$variables`.
fn metric_names(expression: &str) -> Vec<String> {
    // Aggregations may be followed by `by (...)` rather than `(`.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    let chars: Vec<char> = expression.chars().collect();
    let mut names = Vec::new();
    let (mut i, mut braces, mut grouping) = (0, 0usize, false);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
            }
            ')' => grouping = false,
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                    i += 1;
                }
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i]))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                let lower = word.to_ascii_lowercase();
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&lower.as_str())
                {
                    // Label names follow in parentheses (optional after group_left/right).
                    grouping = next == Some(&'(');
                } else if next != Some(&'(')
                    && braces == 0
                    && !grouping
                    && !KEYWORDS.contains(&lower.as_str())
                {
                    names.push(word);
                }
                continue;
            }
            c if c.is_ascii_digit() => {
                // A number or a duration (5m): skip it whole.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(gateway_request_duration_seconds_bucket{route=~"$route", class!="5xx"}[$__rate_interval]))) / on (route) group_left sum(rate(x_total[5m])) > bool 0.5 or vector(0)"#,
    );
    assert_eq!(
        names,
        ["gateway_request_duration_seconds_bucket", "x_total"]
    );
}

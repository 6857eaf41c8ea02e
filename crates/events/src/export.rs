//! OTLP export: every span the sink stores is also forwarded to an OpenTelemetry collector as
//! OTLP/HTTP protobuf (`POST <endpoint>/v1/traces`, `application/x-protobuf`), so Stratus's traces
//! can be read in Jaeger, Tempo or any OTLP backend beside the dashboard.
//!
//! Intake never waits for the collector: stored batches go into a bounded queue with `try_send`;
//! when it is full the batch is dropped and counted (`events_export_dropped_total`). One task
//! gathers up to [`MAX_SPANS`] spans (or waits [`FLUSH_EVERY`]) and posts them with a timeout. A
//! collector that is down costs one failed request per flush and nothing else.
//!
//! Settings follow the OpenTelemetry SDK variables: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full
//! URL) or `OTEL_EXPORTER_OTLP_ENDPOINT` (the base; `/v1/traces` is appended), and
//! `OTEL_EXPORTER_OTLP_HEADERS` (`key=value,key2=value2`, for example an API key). Each span's
//! resource is its own service and instance; `OTEL_SERVICE_NAME` names the exporting scope.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;

use crate::proto;
use crate::record::Row;

/// Batches of rows waiting to be exported; beyond this, batches are dropped.
pub const QUEUE: usize = 256;
/// The most spans one export request carries.
pub const MAX_SPANS: usize = 4096;
/// A partial export is sent after this long.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long one export request may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to export.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub scope: String,
}

impl Settings {
    /// From the OTLP variables; `None` when no endpoint is set (export off).
    pub fn from_env_values(
        endpoint: Option<&str>,
        traces_endpoint: Option<&str>,
        headers: Option<&str>,
        service_name: Option<&str>,
    ) -> anyhow::Result<Option<Self>> {
        let url = match (traces_endpoint, endpoint) {
            (Some(url), _) if !url.is_empty() => url.to_string(),
            (_, Some(base)) if !base.is_empty() => {
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            _ => return Ok(None),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!("the OTLP endpoint must be an http:// or https:// URL, not {url}");
        }
        Ok(Some(Self {
            url,
            headers: parse_headers(headers.unwrap_or(""))?,
            scope: service_name
                .filter(|s| !s.is_empty())
                .unwrap_or("stratus-events")
                .to_string(),
        }))
    }
}

/// `key=value,key2=value2`, values percent-decoded as the OpenTelemetry spec asks.
pub fn parse_headers(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("OTEL_EXPORTER_OTLP_HEADERS: {pair:?} is not key=value")
            })?;
            Ok((key.trim().to_string(), percent_decode(value.trim())))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The handle intake hands stored batches to. Cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    queue: mpsc::Sender<Vec<Row>>,
}

impl Exporter {
    pub fn start(settings: Settings) -> anyhow::Result<Self> {
        stratus_kit::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(1))
            .build()?;
        let (queue, receiver) = mpsc::channel(QUEUE);
        tracing::info!(url = %settings.url, "exporting spans over OTLP/HTTP");
        tokio::spawn(export_loop(client, settings, receiver));
        Ok(Self { queue })
    }

    /// Queues a stored batch for export; never waits. A full queue drops it (counted).
    pub fn offer(&self, rows: &[Row]) {
        if self.queue.try_send(rows.to_vec()).is_err() {
            metrics::counter!("events_export_dropped_total", "reason" => "queue_full")
                .increment(rows.len() as u64);
        }
    }
}

async fn export_loop(
    client: reqwest::Client,
    settings: Settings,
    mut receiver: mpsc::Receiver<Vec<Row>>,
) {
    let mut pending: Vec<Row> = Vec::new();
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = receiver.recv() => match received {
                Some(rows) => {
                    pending.extend(rows);
                    while pending.len() >= MAX_SPANS {
                        let rest = pending.split_off(MAX_SPANS);
                        send(&client, &settings, std::mem::replace(&mut pending, rest)).await;
                    }
                }
                None => {
                    send(&client, &settings, std::mem::take(&mut pending)).await;
                    return;
                }
            },
            _ = ticker.tick() => send(&client, &settings, std::mem::take(&mut pending)).await,
        }
    }
}

async fn send(client: &reqwest::Client, settings: &Settings, rows: Vec<Row>) {
    if rows.is_empty() {
        return;
    }
    let count = rows.len() as u64;
    let body = request(rows, &settings.scope).encode_to_vec();
    let mut post = client
        .post(&settings.url)
        .header("content-type", "application/x-protobuf")
        .body(body);
    for (key, value) in &settings.headers {
        post = post.header(key.as_str(), value.as_str());
    }
    match post.send().await {
        Ok(response) if response.status().is_success() => {
            metrics::counter!("events_exported_total").increment(count);
        }
        Ok(response) => {
            tracing::warn!(status = %response.status(), "the OTLP collector refused spans");
            metrics::counter!("events_export_dropped_total", "reason" => "refused")
                .increment(count);
        }
        Err(error) => {
            tracing::debug!(%error, "the OTLP collector is unreachable");
            metrics::counter!("events_export_dropped_total", "reason" => "unreachable")
                .increment(count);
        }
    }
}

fn bytes_of_hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn span(row: Row) -> proto::Span {
    let start = (row.started_us.max(0) as u64).saturating_mul(1000);
    let mut attributes = vec![proto::KeyValue::string("stratus.kind", row.kind.as_str())];
    if row.kind == "gateway" || row.kind == "server" {
        attributes.push(proto::KeyValue::string("http.route", row.name.as_str()));
    }
    if let Some(method) = row.method {
        attributes.push(proto::KeyValue::string("http.request.method", method));
    }
    if row.status > 0 {
        attributes.push(proto::KeyValue::int(
            "http.response.status_code",
            row.status,
        ));
    }
    if let Some(topic) = row.topic {
        attributes.push(proto::KeyValue::string("messaging.destination.name", topic));
    }
    if let Some(retries) = row.retries {
        attributes.push(proto::KeyValue::int("stratus.retries", retries));
    }
    if let Some(cache) = row.cache {
        attributes.push(proto::KeyValue::string("stratus.cache", cache));
    }
    if let Some(breaker) = row.breaker {
        attributes.push(proto::KeyValue::string("stratus.breaker", breaker));
    }
    if let Some(peer) = row.peer {
        attributes.push(proto::KeyValue::string("peer.service", peer));
    }
    proto::Span {
        trace_id: bytes_of_hex(&row.trace_id),
        span_id: bytes_of_hex(&row.span_id),
        parent_span_id: row
            .parent_span_id
            .as_deref()
            .map(bytes_of_hex)
            .unwrap_or_default(),
        name: row.name,
        kind: match row.kind.as_str() {
            "client" => 3,
            "producer" => 4,
            "consumer" => 5,
            _ => 2,
        },
        start_time_unix_nano: start,
        end_time_unix_nano: start + (row.duration_us.max(0) as u64).saturating_mul(1000),
        attributes,
        status: Some(proto::Status {
            message: String::new(),
            code: if row.ok { 0 } else { 2 },
        }),
    }
}

/// One export request: a resource per (service, instance), its spans under one scope.
pub fn request(rows: Vec<Row>, scope: &str) -> proto::ExportTraceServiceRequest {
    let mut resources: BTreeMap<(String, String), Vec<proto::Span>> = BTreeMap::new();
    for row in rows {
        let key = (row.service.clone(), row.instance.clone());
        resources.entry(key).or_default().push(span(row));
    }
    proto::ExportTraceServiceRequest {
        resource_spans: resources
            .into_iter()
            .map(|((service, instance), spans)| proto::ResourceSpans {
                resource: Some(proto::Resource {
                    attributes: vec![
                        proto::KeyValue::string("service.name", service),
                        proto::KeyValue::string("service.instance.id", instance),
                    ],
                }),
                scope_spans: vec![proto::ScopeSpans {
                    scope: Some(proto::InstrumentationScope {
                        name: scope.to_string(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp;
    use crate::record::{tests::record, validate};

    #[test]
    fn settings_follow_the_otlp_variables() {
        let none = Settings::from_env_values(None, None, None, None).unwrap();
        assert_eq!(none, None);
        let base = Settings::from_env_values(Some("http://c:4318/"), None, None, None)
            .unwrap()
            .unwrap();
        assert_eq!(base.url, "http://c:4318/v1/traces");
        assert_eq!(base.scope, "stratus-events");
        let full = Settings::from_env_values(
            Some("http://c:4318"),
            Some("http://t:4318/custom"),
            Some("api-key=abc%3D%3D, x-team = shop"),
            Some("sink"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(full.url, "http://t:4318/custom");
        assert_eq!(
            full.headers,
            vec![
                ("api-key".to_string(), "abc==".to_string()),
                ("x-team".to_string(), "shop".to_string())
            ]
        );
        assert_eq!(full.scope, "sink");
        assert!(Settings::from_env_values(Some("c:4318"), None, None, None).is_err());
        assert!(parse_headers("novalue").is_err());
    }

    #[test]
    fn exported_spans_map_back_to_the_same_records() {
        let row = validate(record()).unwrap();
        let encoded = request(vec![row.clone()], "stratus-events").encode_to_vec();
        let decoded = proto::ExportTraceServiceRequest::decode(encoded.as_slice()).unwrap();
        let back = otlp::records(otlp::from_proto(decoded)).unwrap();
        assert_eq!(back.len(), 1);
        let back = validate(back[0].clone()).unwrap();
        assert_eq!(back.trace_id, row.trace_id);
        assert_eq!(back.span_id, row.span_id);
        assert_eq!(back.parent_span_id, row.parent_span_id);
        assert_eq!((back.service, back.instance), (row.service, row.instance));
        assert_eq!(back.started_us, row.started_us);
        assert_eq!(back.duration_us, row.duration_us);
        assert_eq!(back.status, row.status);
        assert_eq!(back.name, row.name);
    }
}

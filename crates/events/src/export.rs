//! OTLP export: every span and every log line the sink stores is also forwarded to an
//! OpenTelemetry collector as OTLP/HTTP protobuf (`POST <endpoint>/v1/traces` and
//! `<endpoint>/v1/logs`, `application/x-protobuf`), so Stratus's traces and logs can be read in
//! Jaeger, Tempo, Loki or any OTLP backend beside the dashboard.
//!
//! Intake never waits for the collector: the writer hands each committed batch to a bounded
//! queue and goes on. The bound is in items (spans or lines, [`Settings::queue`]), so a
//! queue of large batches holds no more than one of small ones; a batch that does not fit is
//! dropped and counted (`reason="queue_full"`). One task per signal gathers up to
//! [`MAX_ITEMS`] items (or waits [`FLUSH_EVERY`]) and posts them with a timeout. A collector
//! that is down or slow costs dropped, counted items (`unreachable`, `refused`) and nothing
//! else.
//!
//! Settings follow the OpenTelemetry SDK variables: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and
//! `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` (full URLs), else `OTEL_EXPORTER_OTLP_ENDPOINT` (the base;
//! `/v1/traces` and `/v1/logs` are appended), and `OTEL_EXPORTER_OTLP_HEADERS`
//! (`key=value,key2=value2`, for example an API key). Each item's resource is its own service
//! and instance; `OTEL_SERVICE_NAME` names the exporting scope. What each signal sends is in
//! [`crate::export_spans`] and [`crate::export_logs`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::export_logs::Logs;
use crate::export_spans::Spans;

/// Items (spans, or log lines) each exporter holds while its collector is slow, by default.
pub const QUEUE_ITEMS: usize = 65_536;
/// The most items one export request carries.
pub const MAX_ITEMS: usize = 4096;
/// A partial export is sent after this long.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long one export request may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// One OTLP signal: where its requests go and how a batch of its items is encoded.
pub trait Signal: 'static {
    type Item: Send + 'static;
    /// The path appended to the base endpoint (`/v1/traces`).
    const PATH: &'static str;
    /// The items, named in the exporter's own log lines ("spans").
    const NOUN: &'static str;
    /// The counter of items the collector took.
    const EXPORTED: &'static str;
    /// The counter of items dropped, by `reason`.
    const DROPPED: &'static str;
    /// One `Export*ServiceRequest`, protobuf-encoded, under the scope `scope`.
    fn encode(items: Vec<Self::Item>, scope: &str) -> Vec<u8>;
}

/// Where and how one signal is exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub scope: String,
    /// Items held while the collector is slow; beyond, batches are dropped.
    pub queue: usize,
}

/// The OTLP variables, as read from the environment (crate::Args).
#[derive(Debug, Clone, Default)]
pub struct Variables<'a> {
    pub endpoint: Option<&'a str>,
    pub traces_endpoint: Option<&'a str>,
    pub logs_endpoint: Option<&'a str>,
    pub headers: Option<&'a str>,
    pub service_name: Option<&'a str>,
    pub queue: Option<usize>,
}

impl Variables<'_> {
    /// The settings of the signal whose own URL variable is `signal_endpoint` and whose path is
    /// `path`; `None` when neither it nor the base endpoint is set (that signal's export off).
    pub fn settings(
        &self,
        signal_endpoint: Option<&str>,
        path: &str,
    ) -> anyhow::Result<Option<Settings>> {
        let url = match (signal_endpoint, self.endpoint) {
            (Some(url), _) if !url.is_empty() => url.to_string(),
            (_, Some(base)) if !base.is_empty() => {
                format!("{}{path}", base.trim_end_matches('/'))
            }
            _ => return Ok(None),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!("the OTLP endpoint must be an http:// or https:// URL, not {url}");
        }
        let queue = self.queue.unwrap_or(QUEUE_ITEMS);
        if queue == 0 {
            anyhow::bail!("STRATUS_EVENTS_EXPORT_QUEUE must be at least 1");
        }
        Ok(Some(Settings {
            url,
            headers: parse_headers(self.headers.unwrap_or(""))?,
            scope: self
                .service_name
                .filter(|s| !s.is_empty())
                .unwrap_or("stratus-events")
                .to_string(),
            queue,
        }))
    }

    /// Starts an exporter for each signal that has an endpoint.
    pub fn start(&self) -> anyhow::Result<Exports> {
        let spans = self.settings(self.traces_endpoint, Spans::PATH)?;
        let logs = self.settings(self.logs_endpoint, Logs::PATH)?;
        Ok(Exports {
            spans: spans.map(Exporter::start).transpose()?,
            logs: logs.map(Exporter::start).transpose()?,
        })
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

/// The exporters the writer hands committed batches to: none, either or both.
#[derive(Clone, Default)]
pub struct Exports {
    pub spans: Option<Exporter<Spans>>,
    pub logs: Option<Exporter<Logs>>,
}

/// The handle the writer hands one signal's committed batches to. Cheap to clone.
pub struct Exporter<S: Signal> {
    queue: mpsc::UnboundedSender<Vec<S::Item>>,
    /// Items handed over and not yet taken by the export task: what the bound counts.
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl<S: Signal> Clone for Exporter<S> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            queued: self.queued.clone(),
            limit: self.limit,
        }
    }
}

impl<S: Signal> Exporter<S> {
    pub fn start(settings: Settings) -> anyhow::Result<Self> {
        stratus_kit::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(1))
            .build()?;
        // Unbounded as a channel, bounded by `queued`: the bound is in items, not batches.
        let (queue, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        for reason in ["queue_full", "refused", "unreachable"] {
            metrics::counter!(S::DROPPED, "reason" => reason).increment(0);
        }
        metrics::counter!(S::EXPORTED).increment(0);
        tracing::info!(url = %settings.url, "exporting {} over OTLP/HTTP", S::NOUN);
        let limit = settings.queue;
        tokio::spawn(export_loop::<S>(client, settings, receiver, queued.clone()));
        Ok(Self {
            queue,
            queued,
            limit,
        })
    }

    /// Queues a committed batch for export; never waits. A batch that would take the queue
    /// past its bound is dropped, counted.
    pub fn offer(&self, items: Vec<S::Item>) {
        let count = items.len();
        if count == 0 {
            return;
        }
        let before = self.queued.fetch_add(count, Ordering::AcqRel);
        if before + count > self.limit {
            self.queued.fetch_sub(count, Ordering::AcqRel);
            metrics::counter!(S::DROPPED, "reason" => "queue_full").increment(count as u64);
            return;
        }
        if self.queue.send(items).is_err() {
            // The export task has stopped (the sink is shutting down): nothing will send them.
            self.queued.fetch_sub(count, Ordering::AcqRel);
            metrics::counter!(S::DROPPED, "reason" => "unreachable").increment(count as u64);
        }
    }
}

async fn export_loop<S: Signal>(
    client: reqwest::Client,
    settings: Settings,
    mut receiver: mpsc::UnboundedReceiver<Vec<S::Item>>,
    queued: Arc<AtomicUsize>,
) {
    let mut pending: Vec<S::Item> = Vec::new();
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = receiver.recv() => match received {
                Some(items) => {
                    queued.fetch_sub(items.len(), Ordering::AcqRel);
                    pending.extend(items);
                    while pending.len() >= MAX_ITEMS {
                        let rest = pending.split_off(MAX_ITEMS);
                        send::<S>(&client, &settings, std::mem::replace(&mut pending, rest)).await;
                    }
                }
                None => {
                    send::<S>(&client, &settings, std::mem::take(&mut pending)).await;
                    return;
                }
            },
            _ = ticker.tick() => send::<S>(&client, &settings, std::mem::take(&mut pending)).await,
        }
    }
}

async fn send<S: Signal>(client: &reqwest::Client, settings: &Settings, items: Vec<S::Item>) {
    if items.is_empty() {
        return;
    }
    let count = items.len() as u64;
    let body = S::encode(items, &settings.scope);
    let mut post = client
        .post(&settings.url)
        .header("content-type", "application/x-protobuf")
        .body(body);
    for (key, value) in &settings.headers {
        post = post.header(key.as_str(), value.as_str());
    }
    match post.send().await {
        Ok(response) if response.status().is_success() => {
            metrics::counter!(S::EXPORTED).increment(count);
        }
        Ok(response) => {
            tracing::warn!(status = %response.status(), "the OTLP collector refused {}", S::NOUN);
            metrics::counter!(S::DROPPED, "reason" => "refused").increment(count);
        }
        Err(error) => {
            tracing::debug!(%error, "the OTLP collector is unreachable");
            metrics::counter!(S::DROPPED, "reason" => "unreachable").increment(count);
        }
    }
}

/// A hex id as the bytes OTLP's protobuf carries.
pub(crate) fn bytes_of_hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_otlp_variables() {
        let none = Variables::default();
        assert_eq!(none.settings(None, "/v1/traces").unwrap(), None);
        let base = Variables {
            endpoint: Some("http://c:4318/"),
            ..Default::default()
        };
        let traces = base.settings(None, "/v1/traces").unwrap().unwrap();
        assert_eq!(traces.url, "http://c:4318/v1/traces");
        assert_eq!(traces.scope, "stratus-events");
        assert_eq!(traces.queue, QUEUE_ITEMS);
        let logs = base.settings(None, "/v1/logs").unwrap().unwrap();
        assert_eq!(logs.url, "http://c:4318/v1/logs");
        let full = Variables {
            endpoint: Some("http://c:4318"),
            logs_endpoint: Some("http://l:4318/custom"),
            headers: Some("api-key=abc%3D%3D, x-team = shop"),
            service_name: Some("sink"),
            queue: Some(10),
            ..Default::default()
        };
        let logs = full
            .settings(full.logs_endpoint, "/v1/logs")
            .unwrap()
            .unwrap();
        assert_eq!(logs.url, "http://l:4318/custom");
        assert_eq!(
            logs.headers,
            vec![
                ("api-key".to_string(), "abc==".to_string()),
                ("x-team".to_string(), "shop".to_string())
            ]
        );
        assert_eq!((logs.scope.as_str(), logs.queue), ("sink", 10));
        // The traces keep the base endpoint when only the logs have their own.
        let traces = full
            .settings(full.traces_endpoint, "/v1/traces")
            .unwrap()
            .unwrap();
        assert_eq!(traces.url, "http://c:4318/v1/traces");
        let bad = Variables {
            endpoint: Some("c:4318"),
            ..Default::default()
        };
        assert!(bad.settings(None, "/v1/logs").is_err());
        let empty_queue = Variables {
            queue: Some(0),
            ..base
        };
        assert!(empty_queue.settings(None, "/v1/logs").is_err());
        assert!(parse_headers("novalue").is_err());
    }

    /// A signal whose items are numbers, for the queue's bound.
    struct Numbers;
    impl Signal for Numbers {
        type Item = u32;
        const PATH: &'static str = "/v1/numbers";
        const NOUN: &'static str = "numbers";
        const EXPORTED: &'static str = "test_numbers_exported_total";
        const DROPPED: &'static str = "test_numbers_dropped_total";
        fn encode(items: Vec<u32>, _scope: &str) -> Vec<u8> {
            items.iter().map(|n| *n as u8).collect()
        }
    }

    /// The bound counts items whatever the batches: a batch that does not fit is dropped
    /// whole, and one that fits after the task took some is queued. Offering never waits.
    #[test]
    fn the_queue_is_bounded_in_items() {
        let (queue, mut receiver) = mpsc::unbounded_channel();
        let exporter: Exporter<Numbers> = Exporter {
            queue,
            queued: Arc::default(),
            limit: 10,
        };
        exporter.offer(vec![1; 6]);
        exporter.offer(vec![2; 5]); // 11 > 10: dropped
        exporter.offer(vec![3; 4]); // 10: fits
        exporter.offer(vec![4; 1]); // 11: dropped
        assert_eq!(exporter.queued.load(Ordering::Acquire), 10);
        let first = receiver.try_recv().unwrap();
        assert_eq!(first, vec![1; 6]);
        exporter.queued.fetch_sub(first.len(), Ordering::AcqRel);
        exporter.offer(vec![5; 6]); // 4 + 6: fits again
        assert_eq!(receiver.try_recv().unwrap(), vec![3; 4]);
        assert_eq!(receiver.try_recv().unwrap(), vec![5; 6]);
        assert!(receiver.try_recv().is_err());
    }
}

//! A small client for etcd's v3 JSON gateway (`/v3/...` on the client port).
//!
//! etcd speaks gRPC, and every etcd since 3.3 also serves the same API as JSON over plain HTTP
//! (grpc-gateway). Using that keeps protoc, tonic and a C++ toolchain out of the build: each call
//! is one POST with a JSON body. Two quirks of the mapping shape this module: keys and values are
//! base64, and 64-bit integers (revisions, lease ids, TTLs) are JSON strings.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::{StoreError, StoreResult};

/// A single unary call may take this long; watches have no limit (they are meant to stay open).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct EtcdClient {
    base: String,
    http: reqwest::Client,
}

/// One key and its value, as etcd returns it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KeyValue {
    #[serde(default, deserialize_with = "base64_bytes")]
    pub key: Vec<u8>,
    #[serde(default, deserialize_with = "base64_bytes")]
    pub value: Vec<u8>,
    #[serde(default, deserialize_with = "int64")]
    pub mod_revision: i64,
    /// The lease the key is attached to; 0 for none.
    #[serde(default, deserialize_with = "int64")]
    pub lease: i64,
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct PutResponse {
    #[serde(default)]
    header: Header,
}

#[derive(Deserialize)]
struct DeleteResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    prev_kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct TxnResponse {
    /// Absent (false) when a comparison failed: the JSON gateway leaves out default values.
    #[serde(default)]
    succeeded: bool,
}

#[derive(Deserialize)]
struct LeaseGrantResponse {
    #[serde(rename = "ID", default, deserialize_with = "int64")]
    id: i64,
    #[serde(default)]
    error: Option<String>,
}

/// Streaming calls wrap each message in `{"result": ...}` (or `{"error": ...}`).
#[derive(Deserialize)]
struct Streamed<T> {
    result: Option<T>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct KeepAliveResponse {
    /// Seconds left on the lease after renewal; 0 (absent) when the lease no longer exists.
    #[serde(rename = "TTL", default, deserialize_with = "int64")]
    ttl: i64,
}

/// One message of a watch stream.
#[derive(Debug, Default, Deserialize)]
pub struct WatchResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    /// Set when the requested start revision has been compacted away.
    #[serde(default, deserialize_with = "int64")]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<WatchEvent>,
}

impl WatchResponse {
    pub fn revision(&self) -> i64 {
        self.header.revision
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct WatchEvent {
    /// `DELETE` for a deleted key (its `kv` then holds only the key and the revision); absent
    /// for a put (the JSON gateway leaves out the enum's default, `PUT`).
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub kv: KeyValue,
}

impl WatchEvent {
    pub fn is_delete(&self) -> bool {
        self.kind == "DELETE"
    }
}

impl EtcdClient {
    pub fn new(base: &str) -> StoreResult<Self> {
        stratus_kit::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("building the etcd client: {e}")))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// One unary call. etcd's refusals come back as non-2xx with `{"error", "code", "message"}`.
    async fn call<T: DeserializeOwned>(&self, path: &str, body: Value) -> StoreResult<T> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .post(&url)
            .timeout(CALL_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(format!("{url}: {}", error_chain(&e))))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| StoreError::Unavailable(format!("{url}: reading the answer: {e}")))?;
        if !status.is_success() {
            return Err(StoreError::Unavailable(format!(
                "{url}: {status}: {}",
                refusal(&bytes)
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("{url}: {e}")))
    }

    /// Every key under `prefix`, and the revision they were read at.
    pub async fn range_prefix(&self, prefix: &str) -> StoreResult<(i64, Vec<KeyValue>)> {
        let response = self.range_at(prefix, 0).await?;
        Ok((response.header.revision, response.kvs))
    }

    /// Every key under `prefix` as it was at `revision` (which etcd must not have compacted
    /// away): several prefixes read at one revision are one consistent view.
    pub async fn range_prefix_at(&self, prefix: &str, revision: i64) -> StoreResult<Vec<KeyValue>> {
        Ok(self.range_at(prefix, revision).await?.kvs)
    }

    /// A range read of `prefix`; at the newest revision when `revision` is 0. The answer's
    /// header holds the newest revision either way.
    async fn range_at(&self, prefix: &str, revision: i64) -> StoreResult<RangeResponse> {
        let mut body = json!({
            "key": BASE64.encode(prefix),
            "range_end": BASE64.encode(prefix_end(prefix.as_bytes())),
        });
        if revision > 0 {
            // 64-bit integers travel as strings through the JSON gateway.
            body["revision"] = Value::String(revision.to_string());
        }
        self.call("/v3/kv/range", body).await
    }

    /// How many keys are under `prefix` (a cheap liveness probe that still needs a quorum read).
    pub async fn count_prefix(&self, prefix: &str) -> StoreResult<i64> {
        let body = json!({
            "key": BASE64.encode(prefix),
            "range_end": BASE64.encode(prefix_end(prefix.as_bytes())),
            "count_only": true,
        });
        let response: RangeResponse = self.call("/v3/kv/range", body).await?;
        Ok(response.header.revision)
    }

    pub async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let body = json!({ "key": BASE64.encode(key) });
        let response: RangeResponse = self.call("/v3/kv/range", body).await?;
        Ok(response.kvs.into_iter().next())
    }

    /// Writes `key` attached to `lease` (0: no lease). Returns the new revision.
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> StoreResult<i64> {
        let body = json!({
            "key": BASE64.encode(key),
            "value": BASE64.encode(value),
            "lease": lease.to_string(),
        });
        let response: PutResponse = self.call("/v3/kv/put", body).await?;
        Ok(response.header.revision)
    }

    /// Writes `key` only if it does not exist yet (one transaction), attached to `lease`.
    /// Returns whether it was written.
    pub async fn create(&self, key: &str, value: &[u8], lease: i64) -> StoreResult<bool> {
        let body = json!({
            "compare": [{
                "target": "CREATE",
                "result": "EQUAL",
                "key": BASE64.encode(key),
                "create_revision": "0",
            }],
            "success": [{ "request_put": {
                "key": BASE64.encode(key),
                "value": BASE64.encode(value),
                "lease": lease.to_string(),
            }}],
        });
        let response: TxnResponse = self.call("/v3/kv/txn", body).await?;
        Ok(response.succeeded)
    }

    /// Replaces the value of `key` only if nobody wrote it since `mod_revision` (one
    /// transaction), keeping the lease it has. Returns whether it was written.
    pub async fn replace(&self, key: &str, mod_revision: i64, value: &[u8]) -> StoreResult<bool> {
        let body = json!({
            "compare": [{
                "target": "MOD",
                "result": "EQUAL",
                "key": BASE64.encode(key),
                "mod_revision": mod_revision.to_string(),
            }],
            "success": [{ "request_put": {
                "key": BASE64.encode(key),
                "value": BASE64.encode(value),
                "ignore_lease": true,
            }}],
        });
        let response: TxnResponse = self.call("/v3/kv/txn", body).await?;
        Ok(response.succeeded)
    }

    /// Deletes `key`; returns what was there, if anything.
    pub async fn delete(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let body = json!({ "key": BASE64.encode(key), "prev_kv": true });
        let response: DeleteResponse = self.call("/v3/kv/deleterange", body).await?;
        let _ = response.header.revision;
        Ok(response.prev_kvs.into_iter().next())
    }

    /// A new lease of `ttl` seconds (etcd raises very short TTLs to its own minimum).
    pub async fn grant(&self, ttl: i64) -> StoreResult<i64> {
        let response: LeaseGrantResponse = self
            .call("/v3/lease/grant", json!({ "TTL": ttl.to_string() }))
            .await?;
        match response.error {
            Some(error) if !error.is_empty() => Err(StoreError::Unavailable(error)),
            _ if response.id == 0 => Err(StoreError::Corrupt("lease grant without an id".into())),
            _ => Ok(response.id),
        }
    }

    /// Renews a lease once. `false` if it no longer exists (expired or revoked).
    pub async fn keepalive(&self, lease: i64) -> StoreResult<bool> {
        let response: Streamed<KeepAliveResponse> = self
            .call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))
            .await?;
        if let Some(error) = response.error {
            return Err(StoreError::Unavailable(format!("lease keepalive: {error}")));
        }
        Ok(response.result.is_some_and(|r| r.ttl > 0))
    }

    /// Ends a lease (and deletes every key still attached to it). An unknown lease is not an
    /// error: it has already gone the way we wanted.
    pub async fn revoke(&self, lease: i64) -> StoreResult<()> {
        let url = format!("{}/v3/lease/revoke", self.base);
        let response = self
            .http
            .post(&url)
            .timeout(CALL_TIMEOUT)
            .json(&json!({ "ID": lease.to_string() }))
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(format!("{url}: {}", error_chain(&e))))?;
        let status = response.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        let bytes = response.bytes().await.unwrap_or_default();
        Err(StoreError::Unavailable(format!(
            "{url}: {status}: {}",
            refusal(&bytes)
        )))
    }

    /// Opens a watch on every key under `prefix`, starting at `start_revision`.
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> StoreResult<WatchStream> {
        let url = format!("{}/v3/watch", self.base);
        let body = json!({
            "create_request": {
                "key": BASE64.encode(prefix),
                "range_end": BASE64.encode(prefix_end(prefix.as_bytes())),
                "start_revision": start_revision.to_string(),
            }
        });
        let response = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(format!("{url}: {}", error_chain(&e))))?;
        if !response.status().is_success() {
            let status = response.status();
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(StoreError::Unavailable(format!(
                "{url}: {status}: {}",
                refusal(&bytes)
            )));
        }
        Ok(WatchStream {
            response,
            buffer: Vec::new(),
        })
    }
}

/// An open watch: newline-separated JSON messages on one long HTTP response.
pub struct WatchStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl WatchStream {
    /// The next message; `None` when etcd closed the stream.
    pub async fn next(&mut self) -> StoreResult<Option<WatchResponse>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                let message: Streamed<WatchResponse> = serde_json::from_slice(line)
                    .map_err(|e| StoreError::Corrupt(format!("watch message: {e}")))?;
                if let Some(error) = message.error {
                    return Err(StoreError::Unavailable(format!("watch: {error}")));
                }
                return Ok(Some(message.result.unwrap_or_default()));
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "watch: {}",
                        error_chain(&e)
                    )))
                }
            }
        }
    }
}

/// The end of the key range that holds exactly the keys starting with `prefix`: the prefix with
/// its last byte incremented (etcd's own rule; carrying over 0xff bytes).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): "every key from prefix on", which etcd spells as a single 0 byte.
    vec![0]
}

/// reqwest's errors keep the useful part ("connection refused") in their sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The message of an etcd refusal body, bounded.
fn refusal(body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    message.chars().take(300).collect()
}

/// 64-bit integers arrive as strings ("42"); accept plain numbers too.
fn int64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
    }
    match Int::deserialize(deserializer)? {
        Int::Number(n) => Ok(n),
        Int::Text(text) => text.parse().map_err(serde::de::Error::custom),
    }
}

fn base64_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    BASE64.decode(text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/stratus/"), b"/stratus0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn reads_the_gateway_json() {
        let text = r#"{"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"L3N0cmF0dXMveQ==","mod_revision":"4","value":"eA==","lease":"77"}},{"type":"DELETE","kv":{"key":"eA==","mod_revision":"3"}}]}}"#;
        let message: Streamed<WatchResponse> = serde_json::from_str(text).unwrap();
        let watch = message.result.unwrap();
        assert_eq!(watch.revision(), 4);
        assert_eq!(watch.events[0].kv.key, b"/stratus/y");
        assert_eq!(watch.events[0].kv.value, b"x");
        assert_eq!(watch.events[0].kv.lease, 77);
        assert_eq!(watch.events[1].kv.mod_revision, 3);
        let gone: Streamed<KeepAliveResponse> =
            serde_json::from_str(r#"{"result":{"header":{"revision":"2"},"ID":"12345"}}"#).unwrap();
        assert_eq!(gone.result.unwrap().ttl, 0);
    }
}

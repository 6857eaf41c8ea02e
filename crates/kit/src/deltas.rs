//! Reading the registry's incremental watch (`GET /v1/watch?deltas=true`): a snapshot, then one
//! change per service and index ([`ServiceChange`]), as server-sent events.
//!
//! A follower keeps the snapshot as its view and applies each change to it
//! ([`ServiceChange::apply_to`]); after a drop it reconnects with the index and epoch of its view
//! ([`Resume`]) and the registry sends only what it missed (or a snapshot, when it no longer
//! keeps that far back). A registry older than the incremental watch ignores the parameters and
//! sends the whole catalog as `event: catalog` on every change: each is read as a snapshot, so a
//! follower works with either.

use std::time::Duration;

use anyhow::Context;

use crate::model::{Catalog, ServiceChange};

/// The registry sends a comment every 15 s of silence: this long without a byte is a dead
/// connection (a registry gone without closing it), not a quiet one.
const SILENCE: Duration = Duration::from_secs(45);
/// The most a single event may hold before the stream is given up as broken.
const MAX_EVENT: usize = 64 * 1024 * 1024;

/// One event of the incremental watch.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// The whole view (of the services asked for; an older registry's `catalog` event holds
    /// every service).
    Snapshot(Catalog),
    Change(ServiceChange),
    /// A keep-alive comment (sent every 15 s of silence): the registry is there, nothing changed.
    Alive,
}

/// Where a follower's view is: the registry index it is complete through, and the registry run
/// (epoch) that index belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    pub index: u64,
    pub epoch: String,
}

impl Resume {
    /// The query parameters that resume from here.
    pub fn query(&self) -> String {
        let mut query = format!("&index={}", self.index);
        if !self.epoch.is_empty() {
            query.push_str(&format!("&epoch={}", self.epoch));
        }
        query
    }

    /// Moves on past `delta`.
    pub fn after(&mut self, delta: &Delta) {
        match delta {
            Delta::Snapshot(catalog) => {
                self.index = catalog.index;
                self.epoch = catalog.epoch.clone();
            }
            Delta::Change(change) => self.index = self.index.max(change.index),
            Delta::Alive => {}
        }
    }
}

/// An open incremental watch.
pub struct DeltaStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl DeltaStream {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next event (keep-alives included); `None` when the registry closed the stream.
    /// Cancel-safe: a call dropped
    /// while it waits loses nothing (what was read stays in the buffer).
    pub async fn next(&mut self) -> anyhow::Result<Option<Delta>> {
        loop {
            if let Some(delta) = self.parse_buffered()? {
                return Ok(Some(delta));
            }
            let chunk = tokio::time::timeout(SILENCE, self.response.chunk())
                .await
                .context("the registry's watch fell silent")?
                .context("reading the registry's watch")?;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            self.buffer.extend_from_slice(&chunk);
            anyhow::ensure!(
                self.buffer.len() <= MAX_EVENT,
                "an event of the registry's watch is larger than {MAX_EVENT} bytes"
            );
        }
    }

    /// The next whole event already read, if any (unknown events skipped).
    fn parse_buffered(&mut self) -> anyhow::Result<Option<Delta>> {
        while let Some(end) = find_blank_line(&self.buffer) {
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&block);
            if block.starts_with(':') {
                return Ok(Some(Delta::Alive));
            }
            let (mut kind, mut data) = ("message", String::new());
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    kind = match value.trim() {
                        "snapshot" => "snapshot",
                        "catalog" => "catalog",
                        "change" => "change",
                        _ => "other",
                    };
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            return Ok(Some(match kind {
                "snapshot" | "catalog" => Delta::Snapshot(
                    serde_json::from_str(&data).context("a snapshot from the registry")?,
                ),
                "change" => Delta::Change(
                    serde_json::from_str(&data).context("a change from the registry")?,
                ),
                _ => continue,
            }));
        }
        Ok(None)
    }
}

/// Where the first event in `buffer` ends (the `\n\n` after it).
fn find_blank_line(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|pair| pair == b"\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_names_the_index_and_the_run() {
        let mut resume = Resume::default();
        resume.after(&Delta::Snapshot(Catalog {
            index: 7,
            epoch: "run".into(),
            ..Catalog::default()
        }));
        resume.after(&Delta::Change(ServiceChange::new(9, "a")));
        assert_eq!(resume.query(), "&index=9&epoch=run");
        resume.epoch.clear();
        assert_eq!(resume.query(), "&index=9");
    }

    #[test]
    fn blank_lines_end_events() {
        assert_eq!(find_blank_line(b":\n\nevent: x"), Some(1));
        assert_eq!(find_blank_line(b"event: x\ndata: {}\n"), None);
    }
}

//! Answers encoded once per change and shared by every watcher.
//!
//! When something changes, every watcher blocked on the catalog (or on one service) wakes and is
//! sent the same answer. Encoding it once per watcher made one change cost the catalog's size
//! times the number of watchers in JSON encoding alone; here the first watcher to ask for an
//! answer at a given version encodes it, the others wait for that encoding and share its bytes
//! (`Bytes` clones are reference counts). `registry_answer_encodings_total{answer}` counts the
//! encodings actually made.
//!
//! A version names exactly one answer: the catalog's index (and whether it says `warming`, which
//! turns off without a change of instances), and for a service the version its store gives
//! ([`crate::store::Store::service_versioned`]). Only the newest version of each answer is kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use serde::Serialize;
use stratus_kit::model::{Catalog, ServiceInstances};
use tokio::sync::OnceCell;

/// At most this many services' answers are kept; past it the kept ones are dropped and the next
/// query for each encodes it again (a bound against clients asking for many names).
const MAX_SERVICES: usize = 10_000;

type Slot = Arc<OnceCell<Bytes>>;

#[derive(Default)]
pub struct Answers {
    catalog: Mutex<Option<((u64, bool), Slot)>>,
    services: Mutex<HashMap<String, (u64, Slot)>>,
}

impl Answers {
    /// The catalog's JSON at `version` if it is already encoded (then the catalog need not even
    /// be read).
    pub fn catalog_at(&self, version: (u64, bool)) -> Option<Bytes> {
        match &*lock(&self.catalog) {
            Some((at, slot)) if *at == version => slot.get().cloned(),
            _ => None,
        }
    }

    /// `service`'s JSON at `version` if it is already encoded.
    pub fn service_at(&self, service: &str, version: u64) -> Option<Bytes> {
        match lock(&self.services).get(service) {
            Some((at, slot)) if *at == version => slot.get().cloned(),
            _ => None,
        }
    }

    /// The catalog as JSON, encoded at most once per version.
    pub async fn catalog(&self, catalog: &Catalog) -> Bytes {
        let version = (catalog.index, catalog.warming);
        let slot = {
            let mut kept = lock(&self.catalog);
            match &*kept {
                Some((at, slot)) if *at == version => slot.clone(),
                _ => {
                    let slot = Slot::default();
                    *kept = Some((version, slot.clone()));
                    slot
                }
            }
        };
        shared(&slot, "catalog", catalog).await
    }

    /// One service's answer as JSON, encoded at most once per `version`.
    pub async fn service(&self, answer: &ServiceInstances, version: u64) -> Bytes {
        let slot = {
            let mut kept = lock(&self.services);
            match kept.get(&answer.name) {
                Some((at, slot)) if *at == version => slot.clone(),
                _ => {
                    if kept.len() >= MAX_SERVICES {
                        kept.clear();
                    }
                    let slot = Slot::default();
                    kept.insert(answer.name.clone(), (version, slot.clone()));
                    slot
                }
            }
        };
        shared(&slot, "service", answer).await
    }
}

/// Part of the catalog (`?services=`), encoded for one watcher: such answers differ by the
/// services named, so they are not kept.
pub fn encode_part(catalog: &Catalog) -> Bytes {
    metrics::counter!("registry_answer_encodings_total", "answer" => "part").increment(1);
    Bytes::from(serde_json::to_vec(catalog).unwrap_or_else(|_| b"{}".to_vec()))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each update replaces one entry whole: a poisoned lock is still consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The slot's bytes, encoding `value` into it if nobody has yet (concurrent callers wait for the
/// first one's encoding rather than making their own).
async fn shared<T: Serialize>(slot: &OnceCell<Bytes>, answer: &'static str, value: &T) -> Bytes {
    slot.get_or_init(|| async {
        metrics::counter!("registry_answer_encodings_total", "answer" => answer).increment(1);
        // Plain structs of strings, numbers and maps: encoding them cannot fail.
        Bytes::from(serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()))
    })
    .await
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_encoding_per_version() {
        let answers = Answers::default();
        let mut catalog = Catalog {
            index: 7,
            ..Catalog::default()
        };
        let first = answers.catalog(&catalog).await;
        // The same version is the same answer: the kept bytes are handed out, not re-encoded.
        catalog.epoch = "not looked at".into();
        assert_eq!(answers.catalog(&catalog).await, first);
        catalog.index = 8;
        assert_ne!(answers.catalog(&catalog).await, first);
        assert_eq!(
            answers.catalog_at((8, false)),
            Some(answers.catalog(&catalog).await)
        );
        assert_eq!(
            answers.catalog_at((7, false)),
            None,
            "only the newest is kept"
        );

        let mut service = ServiceInstances {
            index: 3,
            name: "catalog".into(),
            instances: vec![],
        };
        let first = answers.service(&service, 3).await;
        service.index = 99;
        assert_eq!(answers.service(&service, 3).await, first);
        assert_ne!(answers.service(&service, 4).await, first);
    }
}

//! Active health checks when instances live in etcd, shared by several registry processes.
//!
//! With the memory store one process holds everything, so it probes everything. With etcd, any
//! number of registries serve one view, and each instance's check must be run by exactly one of
//! them, or they would each write the verdict and fight whenever they disagree (one registry
//! that cannot reach an instance would keep flipping it). So checks have owners:
//!
//! - `register` writes the check next to the instance: `/stratus/checks/<service>/<id>` (what to
//!   probe, how often), attached to the instance's lease, so it goes when the instance does;
//! - each registry process holds a *session*: an etcd lease of [`SESSION_TTL`] seconds it keeps
//!   alive;
//! - every [`SYNC`] each registry lists the checks and their owners
//!   (`/stratus/check-owners/<service>/<id>` = the owning registry, on its session lease) and
//!   claims each check that has no owner with a create-if-absent transaction: exactly one
//!   registry wins each check. It probes the checks it owns, with the memory store's rules
//!   (passing → warning → critical, see [`crate::checks`]);
//! - the verdict is written into the instance's JSON (`health`) only when it changes, with a
//!   compare-on-revision transaction, so a registration written meanwhile is never overwritten
//!   with stale contents. The write moves etcd's revision, which wakes the blocking queries and
//!   event streams of every registry; critical instances are left out of every answer.
//!
//! When a registry dies, its session lease runs out (about [`SESSION_TTL`] seconds), its owner
//! keys vanish with it, and the survivors claim those checks at their next sync. During that gap
//! nobody probes the orphaned checks; their instances' leases still expire as usual.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stratus_kit::model::{Check, Health};
use tokio::sync::mpsc;

use crate::checks::{self, CheckSpec, Due};
use crate::store::etcd::{decode, key};
use crate::store::etcd_api::EtcdClient;
use crate::store::{StoreError, StoreResult};

pub const CHECKS_PREFIX: &str = "/stratus/checks/";
pub const OWNERS_PREFIX: &str = "/stratus/check-owners/";
/// The session lease of a registry process: its checks move to another registry this long
/// after it dies.
pub const SESSION_TTL: i64 = 2;
/// How often each registry renews its session, lists the checks and claims unowned ones.
pub const SYNC: Duration = Duration::from_millis(250);
/// How often due probes are looked for.
const TICK: Duration = Duration::from_millis(20);

pub fn check_key(service: &str, id: &str) -> String {
    format!("{CHECKS_PREFIX}{service}/{id}")
}

fn owner_key(name: &str) -> String {
    format!("{OWNERS_PREFIX}{name}")
}

/// What a registration's check says, as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    pub authority: String,
    pub check: Check,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

impl CheckRecord {
    pub fn new(authority: &str, spec: &CheckSpec) -> Self {
        Self {
            authority: authority.to_string(),
            check: spec.check.clone(),
            interval_ms: u64::try_from(spec.interval.as_millis()).unwrap_or(u64::MAX),
            timeout_ms: u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    pub fn encode(&self) -> StoreResult<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| StoreError::Corrupt(format!("encoding a check: {e}")))
    }

    fn spec(&self) -> CheckSpec {
        CheckSpec {
            check: self.check.clone(),
            interval: Duration::from_millis(self.interval_ms),
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }
}

/// One check this registry owns, and what its probes found.
struct Owned {
    record: CheckRecord,
    failures: u32,
    next_check: Instant,
    probing: bool,
    /// The health last written to (or read from) etcd; `None`: not known yet.
    stored: Option<Health>,
    generation: u64,
    /// What each probe of this check needs, built once (with the plaintext HTTP probe's kept
    /// connection).
    due: Arc<Due>,
}

/// A probe's outcome, sent back to the loop that owns the state.
struct Outcome {
    name: String,
    generation: u64,
    result: Result<(), String>,
}

/// Background task: this registry process's share of the checks. `member` names it in the
/// owner keys (for operators reading etcd).
pub async fn run(client: EtcdClient, member: String) {
    let probes = checks::Probes::default();
    let (report, mut outcomes) = mpsc::unbounded_channel::<Outcome>();
    let mut owned: BTreeMap<String, Owned> = BTreeMap::new();
    let mut session: Option<i64> = None;
    let mut generations = 0u64;
    let mut last_sync = Instant::now() - SYNC;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Some(outcome) = outcomes.recv() => {
                settle(&client, &mut owned, outcome).await;
                continue;
            }
        }
        if last_sync.elapsed() >= SYNC {
            last_sync = Instant::now();
            if let Err(error) =
                sync(&client, &member, &mut session, &mut owned, &mut generations).await
            {
                tracing::warn!(%error, "health checks: cannot sync with etcd; retrying");
            }
        }
        let now = Instant::now();
        for (name, state) in owned.iter_mut() {
            if state.probing || state.next_check > now {
                continue;
            }
            state.probing = true;
            let due = state.due.clone();
            let probes = probes.clone();
            let report = report.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let result = checks::probe(&probes, &due).await;
                let _ = report.send(Outcome {
                    name,
                    generation: due.generation,
                    result,
                });
            });
        }
    }
}

/// Renews the session, lists checks and owners, claims what nobody owns and lets go of what
/// is gone.
async fn sync(
    client: &EtcdClient,
    member: &str,
    session: &mut Option<i64>,
    owned: &mut BTreeMap<String, Owned>,
    generations: &mut u64,
) -> StoreResult<()> {
    let lease = match *session {
        Some(lease) if client.keepalive(lease).await? => lease,
        previous => {
            if previous.is_some() {
                // Our session lapsed (etcd was away longer than its TTL): our owner keys are
                // gone and others may have claimed our checks.
                tracing::warn!("health checks: session lease lapsed; claiming afresh");
                owned.clear();
            }
            let lease = client.grant(SESSION_TTL).await?;
            *session = Some(lease);
            lease
        }
    };
    let (_, checks) = client.range_prefix(CHECKS_PREFIX).await?;
    let (_, owners) = client.range_prefix(OWNERS_PREFIX).await?;
    let owners: HashMap<String, i64> = owners
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(&kv.key);
            Some((key.strip_prefix(OWNERS_PREFIX)?.to_string(), kv.lease))
        })
        .collect();
    let mut current: HashMap<String, CheckRecord> = HashMap::new();
    for kv in &checks {
        let key = String::from_utf8_lossy(&kv.key);
        let Some(name) = key.strip_prefix(CHECKS_PREFIX) else {
            continue;
        };
        match serde_json::from_slice::<CheckRecord>(&kv.value) {
            Ok(record) => {
                current.insert(name.to_string(), record);
            }
            Err(error) => tracing::warn!(%key, %error, "skipping an unreadable check in etcd"),
        }
    }

    // Let go of checks that are gone (their instance left) or that someone else now owns.
    let mut released = Vec::new();
    owned.retain(|name, _| {
        let keep = current.contains_key(name) && owners.get(name) == Some(&lease);
        if !keep {
            released.push(name.clone());
        }
        keep
    });
    for name in released {
        if !current.contains_key(&name) && owners.get(&name) == Some(&lease) {
            client.delete(&owner_key(&name)).await?;
        }
    }

    let now = Instant::now();
    for (name, record) in current {
        let ours = match owners.get(&name) {
            Some(owner) => *owner == lease,
            None => {
                client
                    .create(&owner_key(&name), member.as_bytes(), lease)
                    .await?
            }
        };
        if !ours {
            continue;
        }
        match owned.get_mut(&name) {
            Some(state) if state.record == record => {}
            _ => {
                // New to us, or the instance re-registered with another check: start afresh.
                *generations += 1;
                let spec = record.spec();
                let first = now + spec.interval.min(checks::RECHECK);
                let Some((service, id)) = name.split_once('/') else {
                    continue;
                };
                let due = Due::new(service, id, record.authority.clone(), spec, *generations);
                owned.insert(
                    name,
                    Owned {
                        record,
                        failures: 0,
                        next_check: first,
                        probing: false,
                        stored: None,
                        generation: *generations,
                        due: Arc::new(due),
                    },
                );
            }
        }
    }
    Ok(())
}

/// Applies a probe's outcome: the new health, written to etcd if it changed.
async fn settle(client: &EtcdClient, owned: &mut BTreeMap<String, Owned>, outcome: Outcome) {
    let Some(state) = owned.get_mut(&outcome.name) else {
        return;
    };
    if state.generation != outcome.generation {
        return;
    }
    state.probing = false;
    state.failures = match &outcome.result {
        Ok(()) => 0,
        Err(_) => state.failures.saturating_add(1),
    };
    let spec = state.record.spec();
    state.next_check = Instant::now() + spec.next_delay(state.failures);
    let health = CheckSpec::health_after(state.failures);
    if state.stored == Some(health) {
        return;
    }
    let Some((service, id)) = outcome.name.split_once('/') else {
        return;
    };
    match write_health(client, service, id, health).await {
        Ok(Some(Health::Critical)) if health == Health::Warning => {
            // Taken over from another registry while critical: stay critical.
            state.failures = checks::CRITICAL_AFTER;
            state.stored = Some(Health::Critical);
        }
        Ok(Some(before)) => {
            state.stored = Some(health);
            if before != health {
                let reason = outcome.result.err().unwrap_or_default();
                if health == Health::Passing {
                    tracing::info!(%service, %id, ?before, after = ?health, "health check passing");
                } else {
                    tracing::warn!(%service, %id, ?before, after = ?health, %reason, "health check failed");
                }
            }
        }
        // The instance is gone, or was written meanwhile: the next sync sorts it out.
        Ok(None) => state.stored = None,
        Err(error) => {
            state.stored = None;
            tracing::warn!(%service, %id, %error, "cannot record a health verdict in etcd");
        }
    }
}

/// Sets the instance's `health` in etcd if it differs. Returns the health it had, or `None`
/// when the instance is gone or was rewritten meanwhile.
async fn write_health(
    client: &EtcdClient,
    service: &str,
    id: &str,
    health: Health,
) -> StoreResult<Option<Health>> {
    let key = key(service, id);
    let Some(kv) = client.get(&key).await? else {
        return Ok(None);
    };
    let Some(mut instance) = decode(&kv) else {
        return Ok(None);
    };
    let before = instance.health;
    // A critical instance is not made routable by a new owner's first failed probe.
    if before == health || (before == Health::Critical && health == Health::Warning) {
        return Ok(Some(before));
    }
    instance.health = health;
    let value = serde_json::to_vec(&instance)
        .map_err(|e| StoreError::Corrupt(format!("encoding {service}/{id}: {e}")))?;
    if client.replace(&key, kv.mod_revision, &value).await? {
        Ok(Some(before))
    } else {
        Ok(None)
    }
}

/// A name for this registry process in the owner keys.
pub fn member_name() -> Arc<str> {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "registry".into());
    format!("{host}/{}/{}", std::process::id(), stratus_kit::new_id()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_records_round_trip() {
        let spec = CheckSpec {
            check: Check::Http("/healthz".into()),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(300),
        };
        let record = CheckRecord::new("127.0.0.1:9000", &spec);
        let bytes = record.encode().unwrap();
        let back: CheckRecord = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.spec(), spec);
        assert_eq!(check_key("catalog", "a"), "/stratus/checks/catalog/a");
    }
}

//! A rolling restart of one component, one replica at a time, losing no request.
//!
//! For each old replica: start a new one; wait until it is ready, registered and (when a route
//! sends to the component) listed as up by the gateway, so traffic has somewhere to go; only
//! then SIGTERM the old one, which fails readiness, deregisters, keeps serving for its drain
//! period while gateways drop it, finishes what is in flight and exits; wait for that exit.
//! Components on a fixed port (registry, gateway, ...) cannot run twice, so they restart in
//! place: stop, then start.
//!
//! The rollout runs as its own task and drives the supervisor through its [`Handle`]; the
//! supervisor leaves the component alone (no scaling, no restarts of a stale spec) until
//! `end_rollout`. Progress goes out as lines on `say`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::launch::Launcher;
use crate::supervisor::{Handle, ReplicaView, RolloutPlan};

/// How long a new replica may take to be ready and routed.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the rollout described by `plan`; the last line says whether it completed.
pub async fn run(
    handle: Handle,
    launcher: Arc<Launcher>,
    component: String,
    plan: RolloutPlan,
    say: mpsc::Sender<String>,
) {
    let began = Instant::now();
    let outcome = replace_all(&handle, &launcher, &component, &plan, &say).await;
    handle.end_rollout(&component).await;
    let line = match outcome {
        Ok(()) => format!(
            "rollout of {component} complete: {} replica(s) replaced in {:.1} s\n",
            plan.old.len(),
            began.elapsed().as_secs_f64()
        ),
        Err(error) => format!("rollout of {component} FAILED: {error}\n"),
    };
    let _ = say.send(line).await;
}

async fn replace_all(
    handle: &Handle,
    launcher: &Launcher,
    component: &str,
    plan: &RolloutPlan,
    say: &mpsc::Sender<String>,
) -> Result<(), String> {
    let total = plan.old.len();
    if total == 0 {
        let _ = say
            .send(format!("{component} has no running replica to replace\n"))
            .await;
        return Ok(());
    }
    let _ = say
        .send(format!(
            "rolling out {component}: {total} replica(s), one at a time\n"
        ))
        .await;
    for (n, old) in plan.old.iter().enumerate() {
        let step = format!("[{}/{total}]", n + 1);
        let line = |text: String| format!("{step} {text}\n");
        if plan.fixed_port {
            let _ = say
                .send(line(format!(
                    "stopping {component} #{} (fixed port: restarted in place)",
                    old.ordinal
                )))
                .await;
            stop(handle, old, &step, say).await?;
        }
        let key = handle
            .start_replica(component)
            .await
            .ok_or("stratus up is stopping")??;
        let new = wait_ready(handle, launcher, key, plan.routed).await?;
        let _ = say
            .send(line(format!(
                "{component} #{} started (pid {}, port {}, instance {}): ready{}",
                new.ordinal,
                new.pid.map(|p| p.to_string()).unwrap_or("-".into()),
                new.port.map(|p| p.to_string()).unwrap_or("-".into()),
                new.instance_id,
                if plan.routed {
                    ", registered, routed by the gateway"
                } else {
                    ""
                }
            )))
            .await;
        if !plan.fixed_port {
            let _ = say
                .send(line(format!(
                    "stopping {component} #{} (pid {}): deregister, drain, exit",
                    old.ordinal,
                    old.pid.map(|p| p.to_string()).unwrap_or("-".into())
                )))
                .await;
            stop(handle, old, &step, say).await?;
        }
    }
    Ok(())
}

async fn stop(
    handle: &Handle,
    old: &ReplicaView,
    step: &str,
    say: &mpsc::Sender<String>,
) -> Result<(), String> {
    let began = Instant::now();
    let exit = handle
        .stop_replica(old.key)
        .await
        .ok_or("stratus up is stopping")?;
    let _ = say
        .send(format!(
            "{step} {} #{} exited ({exit}) after {:.1} s\n",
            old.component,
            old.ordinal,
            began.elapsed().as_secs_f64()
        ))
        .await;
    Ok(())
}

/// Polls until replica `key` is ready (and routed, when `routed`).
async fn wait_ready(
    handle: &Handle,
    launcher: &Launcher,
    key: u64,
    routed: bool,
) -> Result<ReplicaView, String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let Some(view) = handle.replica(key).await else {
            return Err("the new replica is gone".into());
        };
        if view.health == "restarting" {
            return Err(format!(
                "the new replica {} #{} crashed ({}); see {}",
                view.component,
                view.ordinal,
                view.last_exit.as_deref().unwrap_or("?"),
                view.log
            ));
        }
        if view.health == "ready"
            && (!routed
                || launcher
                    .gateway_routes_to(&view.component, &view.instance_id)
                    .await)
        {
            return Ok(view);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the new replica {} #{} was not ready and routed within {READY_TIMEOUT:?}; see {}",
                view.component, view.ordinal, view.log
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

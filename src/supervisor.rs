//! The supervisor: one task that owns every running replica and the desired state, and keeps
//! the two in step.
//!
//! Nothing else touches a child process. The control API, rollouts and readiness probes talk to
//! the supervisor by sending it a [`Command`] over a channel (with a oneshot for the answer), in
//! the style of mini-redis: the state needs no locks because only this task ever sees it.
//!
//! Every tick (200 ms) it:
//! - reaps replicas that exited: a stopped one is forgotten, a crashed one waits out a back-off
//!   (1 s, 2 s, 4 s ... capped at 30 s; the streak resets after a minute of stable life) and is
//!   started again, counted in `restarts` with the reason in `last_exit`;
//! - looks at stratus.toml about once a second and adopts a changed file that parses;
//! - reconciles: too few replicas of a component → start more; too many → SIGTERM the newest;
//!   replicas started with another env or command than desired → a rolling restart.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::launch::{Launcher, Probe};
use crate::manifest::{ComponentSpec, Manifest, MAX_REPLICAS};

const TICK: Duration = Duration::from_millis(200);
const FILE_CHECK: Duration = Duration::from_secs(1);
/// A replica that lived this long before crashing starts its back-off from the beginning.
const STABLE_AFTER: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// SIGTERM first; SIGKILL for a replica still running this long after.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a readiness probe keeps trying after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A request to the supervisor. Each carries the sender its answer goes back on.
pub enum Command {
    Status(oneshot::Sender<StatusView>),
    Scale {
        replicas: BTreeMap<String, usize>,
        reply: oneshot::Sender<Result<Vec<String>, Refusal>>,
    },
    BeginRollout {
        component: String,
        reply: oneshot::Sender<Result<RolloutPlan, Refusal>>,
    },
    StartReplica {
        component: String,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Replica {
        key: u64,
        reply: oneshot::Sender<Option<ReplicaView>>,
    },
    /// SIGTERM; the answer (how it exited) comes once the process is gone.
    StopReplica {
        key: u64,
        reply: oneshot::Sender<String>,
    },
    EndRollout {
        component: String,
    },
    /// From a readiness probe: incarnation `incarnation` of replica `key` is ready on `port`.
    Ready {
        key: u64,
        incarnation: u64,
        port: u16,
    },
}

/// Why a request was turned down.
#[derive(Debug)]
pub enum Refusal {
    NotFound(String),
    Invalid(String),
    Conflict(String),
}

/// The replicas a rollout replaces, and how to replace them.
pub struct RolloutPlan {
    pub old: Vec<ReplicaView>,
    /// Some gateway route sends to this component: wait until the gateway routes to a new one.
    pub routed: bool,
    /// The component listens on a fixed port: stop the old replica before starting the new one.
    pub fixed_port: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub file: String,
    pub components: Vec<ComponentView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentView {
    pub name: String,
    pub desired: usize,
    pub rolling_out: bool,
    pub replicas: Vec<ReplicaView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaView {
    pub key: u64,
    pub component: String,
    pub ordinal: usize,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub instance_id: String,
    /// starting | ready | stopping | restarting
    pub health: &'static str,
    /// The registry's view of this instance (passing | warning | critical), or None when the
    /// registry does not list it; filled in by the control API.
    pub registry: Option<String>,
    /// The SPIFFE ID of the certificate the replica presents, and seconds until it expires;
    /// filled in by the control API (with mutual TLS on).
    pub identity: Option<String>,
    pub certificate_expires_in: Option<i64>,
    pub restarts: u32,
    pub uptime_seconds: f64,
    pub last_exit: Option<String>,
    pub log: String,
}

/// The sending side, cloned by whoever needs the supervisor.
#[derive(Clone)]
pub struct Handle(mpsc::Sender<Command>);

impl Handle {
    /// Sends a command and waits for its answer; `None` once the supervisor has stopped.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.0.send(make(reply)).await.ok()?;
        answer.await.ok()
    }

    pub async fn status(&self) -> Option<StatusView> {
        self.ask(Command::Status).await
    }

    pub async fn scale(
        &self,
        replicas: BTreeMap<String, usize>,
    ) -> Option<Result<Vec<String>, Refusal>> {
        self.ask(|reply| Command::Scale { replicas, reply }).await
    }

    pub async fn begin_rollout(&self, component: &str) -> Option<Result<RolloutPlan, Refusal>> {
        let component = component.to_string();
        self.ask(|reply| Command::BeginRollout { component, reply })
            .await
    }

    pub async fn start_replica(&self, component: &str) -> Option<Result<u64, String>> {
        let component = component.to_string();
        self.ask(|reply| Command::StartReplica { component, reply })
            .await
    }

    pub async fn replica(&self, key: u64) -> Option<ReplicaView> {
        self.ask(|reply| Command::Replica { key, reply })
            .await
            .flatten()
    }

    pub async fn stop_replica(&self, key: u64) -> Option<String> {
        self.ask(|reply| Command::StopReplica { key, reply }).await
    }

    pub async fn end_rollout(&self, component: &str) {
        let component = component.to_string();
        let _ = self.0.send(Command::EndRollout { component }).await;
    }
}

enum State {
    Starting,
    Ready,
    Stopping {
        since: Instant,
        killed: bool,
    },
    /// Crashed; started again at `until`.
    Restarting {
        until: Instant,
    },
}

struct Replica {
    key: u64,
    ordinal: usize,
    /// The spec it was started with (compared with the desired one to see a changed env).
    spec: ComponentSpec,
    instance_id: String,
    /// None while waiting out a back-off.
    child: Option<tokio::process::Child>,
    started: Instant,
    state: State,
    port: Option<u16>,
    /// Bumped at every start, so a late readiness report of an earlier process is ignored.
    incarnation: u64,
    restarts: u32,
    /// Crashes in a row without a stable period between them: sets the back-off.
    streak: u32,
    last_exit: Option<String>,
    stop_waiters: Vec<oneshot::Sender<String>>,
}

impl Replica {
    fn alive(&self) -> bool {
        !matches!(self.state, State::Stopping { .. })
    }

    fn view(&self, launcher: &Launcher) -> ReplicaView {
        ReplicaView {
            key: self.key,
            component: self.spec.name.clone(),
            ordinal: self.ordinal,
            pid: self.child.as_ref().and_then(|c| c.id()),
            port: self.port,
            instance_id: self.instance_id.clone(),
            health: match self.state {
                State::Starting => "starting",
                State::Ready => "ready",
                State::Stopping { .. } => "stopping",
                State::Restarting { .. } => "restarting",
            },
            registry: None,
            identity: None,
            certificate_expires_in: None,
            restarts: self.restarts,
            uptime_seconds: match self.state {
                State::Restarting { .. } => 0.0,
                _ => self.started.elapsed().as_secs_f64(),
            },
            last_exit: self.last_exit.clone(),
            log: launcher
                .log_path(&self.spec.name, self.ordinal)
                .display()
                .to_string(),
        }
    }
}

pub struct Supervisor {
    launcher: Arc<Launcher>,
    file: PathBuf,
    /// The text of the file last seen (adopted or refused), so a change is noticed once.
    file_text: String,
    /// The file as last adopted; `desired` is this plus `stratus scale` changes.
    file_manifest: Manifest,
    desired: Manifest,
    replicas: Vec<Replica>,
    next_key: u64,
    /// Components in the middle of a rollout: reconciling leaves them alone until it ends.
    rolling: HashSet<String>,
    commands: mpsc::Receiver<Command>,
    handle: Handle,
}

impl Supervisor {
    pub fn new(launcher: Arc<Launcher>, file: PathBuf, manifest: Manifest, text: String) -> Self {
        let (sender, commands) = mpsc::channel(64);
        Self {
            launcher,
            file,
            file_text: text,
            file_manifest: manifest.clone(),
            desired: manifest,
            replicas: Vec::new(),
            next_key: 0,
            rolling: HashSet::new(),
            commands,
            handle: Handle(sender),
        }
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Starts every component in file order, each one ready before the next begins.
    pub async fn start_all(
        &mut self,
        timeout: Duration,
        mut announce: impl FnMut(&ComponentSpec, Duration),
    ) -> anyhow::Result<()> {
        for spec in self.desired.components.clone() {
            let began = Instant::now();
            let first = self.replicas.len();
            for _ in 0..spec.replicas {
                self.add_replica(&spec, false)?;
            }
            let deadline = Instant::now() + timeout;
            for index in first..self.replicas.len() {
                loop {
                    let replica = &mut self.replicas[index];
                    if let Some(child) = replica.child.as_mut() {
                        if let Some(status) = child.try_wait()? {
                            anyhow::bail!(
                                "{} exited during start-up ({}); see {}",
                                spec.name,
                                describe(status),
                                self.launcher
                                    .log_path(&spec.name, replica.ordinal)
                                    .display()
                            );
                        }
                    }
                    if let Probe::Ready(port) =
                        self.launcher.probe(&spec.name, &replica.instance_id).await
                    {
                        replica.port = Some(port);
                        replica.state = State::Ready;
                        break;
                    }
                    if Instant::now() > deadline {
                        anyhow::bail!("{} was not ready within {timeout:?}", spec.name);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            announce(&spec, began.elapsed());
        }
        Ok(())
    }

    /// Serves commands and reconciles until Ctrl-C or SIGTERM; then stops everything.
    pub async fn run(mut self) {
        let signal = stratus_kit::shutdown::signal();
        tokio::pin!(signal);
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut file_checked = Instant::now();
        loop {
            tokio::select! {
                _ = &mut signal => break,
                Some(command) = self.commands.recv() => self.handle_command(command),
                _ = ticker.tick() => {
                    self.reap();
                    if file_checked.elapsed() >= FILE_CHECK {
                        file_checked = Instant::now();
                        self.check_file();
                    }
                    self.reconcile();
                }
            }
        }
        println!("\nStopping...");
        self.stop_all().await;
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Scale { replicas, reply } => {
                let _ = reply.send(self.scale(replicas));
            }
            Command::BeginRollout { component, reply } => {
                let _ = reply.send(self.begin_rollout(&component));
            }
            Command::StartReplica { component, reply } => {
                let result = match self.desired.component(&component).cloned() {
                    Some(spec) => self.add_replica(&spec, true).map_err(|e| format!("{e:#}")),
                    None => Err(format!("{component} is no longer in the desired state")),
                };
                let _ = reply.send(result);
            }
            Command::Replica { key, reply } => {
                let view = self
                    .replicas
                    .iter()
                    .find(|r| r.key == key)
                    .map(|r| r.view(&self.launcher));
                let _ = reply.send(view);
            }
            Command::StopReplica { key, reply } => {
                match self.replicas.iter_mut().find(|r| r.key == key) {
                    Some(replica) => {
                        replica.stop_waiters.push(reply);
                        terminate(replica);
                    }
                    None => {
                        let _ = reply.send("already gone".into());
                    }
                }
            }
            Command::EndRollout { component } => {
                self.rolling.remove(&component);
            }
            Command::Ready {
                key,
                incarnation,
                port,
            } => {
                if let Some(replica) = self
                    .replicas
                    .iter_mut()
                    .find(|r| r.key == key && r.incarnation == incarnation)
                {
                    if matches!(replica.state, State::Starting) {
                        replica.state = State::Ready;
                        replica.port = Some(port);
                    }
                }
            }
        }
    }

    /// Starts a new replica of `spec` with the lowest free ordinal; returns its key.
    fn add_replica(&mut self, spec: &ComponentSpec, probe: bool) -> anyhow::Result<u64> {
        let used: HashSet<usize> = self
            .replicas
            .iter()
            .filter(|r| r.spec.name == spec.name)
            .map(|r| r.ordinal)
            .collect();
        let ordinal = (0..).find(|o| !used.contains(o)).unwrap_or_default();
        let key = self.next_key;
        self.next_key += 1;
        let instance_id = stratus_kit::new_id();
        let callers = self.desired.allowed_callers(&spec.name);
        let child = self.launcher.spawn(spec, ordinal, &instance_id, &callers)?;
        self.replicas.push(Replica {
            key,
            ordinal,
            spec: spec.clone(),
            instance_id,
            child: Some(child),
            started: Instant::now(),
            state: State::Starting,
            port: None,
            incarnation: 0,
            restarts: 0,
            streak: 0,
            last_exit: None,
            stop_waiters: Vec::new(),
        });
        if probe {
            self.probe(key);
        }
        Ok(key)
    }

    /// Watches a freshly started replica until it is ready, then tells the supervisor.
    fn probe(&self, key: u64) {
        let Some(replica) = self.replicas.iter().find(|r| r.key == key) else {
            return;
        };
        let (name, id, incarnation) = (
            replica.spec.name.clone(),
            replica.instance_id.clone(),
            replica.incarnation,
        );
        let launcher = self.launcher.clone();
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + READY_TIMEOUT;
            while Instant::now() < deadline {
                if let Probe::Ready(port) = launcher.probe(&name, &id).await {
                    let _ = handle
                        .0
                        .send(Command::Ready {
                            key,
                            incarnation,
                            port,
                        })
                        .await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// Collects exited processes; restarts crashed ones once their back-off is over.
    fn reap(&mut self) {
        let now = Instant::now();
        let mut gone = Vec::new();
        let mut due = Vec::new();
        for replica in &mut self.replicas {
            if let State::Restarting { until } = replica.state {
                if now >= until {
                    due.push(replica.key);
                }
                continue;
            }
            let Some(child) = replica.child.as_mut() else {
                if matches!(replica.state, State::Stopping { .. }) {
                    for waiter in replica.stop_waiters.drain(..) {
                        let _ = waiter.send("was not running".into());
                    }
                    gone.push(replica.key);
                }
                continue;
            };
            let status = match child.try_wait() {
                Ok(Some(status)) => status,
                Ok(None) => {
                    if let State::Stopping { since, killed } = &mut replica.state {
                        if !*killed && since.elapsed() > STOP_TIMEOUT {
                            println!(
                                "  {} #{} did not stop within {STOP_TIMEOUT:?}; killing it",
                                replica.spec.name, replica.ordinal
                            );
                            let _ = child.start_kill();
                            *killed = true;
                        }
                    }
                    continue;
                }
                Err(error) => {
                    eprintln!("  could not check on {}: {error}", replica.spec.name);
                    continue;
                }
            };
            let exit = describe(status);
            replica.child = None;
            if let State::Stopping { since, .. } = replica.state {
                println!(
                    "  ■ {} #{} stopped ({exit}) after {:.1} s",
                    replica.spec.name,
                    replica.ordinal,
                    since.elapsed().as_secs_f64()
                );
                for waiter in replica.stop_waiters.drain(..) {
                    let _ = waiter.send(exit.clone());
                }
                gone.push(replica.key);
                continue;
            }
            if replica.started.elapsed() > STABLE_AFTER {
                replica.streak = 0;
            }
            let delay = backoff(replica.streak);
            replica.streak += 1;
            replica.restarts += 1;
            replica.last_exit = Some(exit.clone());
            replica.port = None;
            replica.state = State::Restarting { until: now + delay };
            println!(
                "  ✗ {} #{} exited ({exit}); restarting in {:.0} s (restart {})",
                replica.spec.name,
                replica.ordinal,
                delay.as_secs_f64(),
                replica.restarts
            );
        }
        self.replicas.retain(|r| !gone.contains(&r.key));
        for key in due {
            self.restart(key);
        }
    }

    /// Starts a crashed replica again, with the spec desired now.
    fn restart(&mut self, key: u64) {
        let Some(index) = self.replicas.iter().position(|r| r.key == key) else {
            return;
        };
        let name = self.replicas[index].spec.name.clone();
        let Some(spec) = self.desired.component(&name).cloned() else {
            self.replicas.remove(index);
            return;
        };
        let replica = &mut self.replicas[index];
        let instance_id = stratus_kit::new_id();
        let callers = self.desired.allowed_callers(&spec.name);
        match self
            .launcher
            .spawn(&spec, replica.ordinal, &instance_id, &callers)
        {
            Ok(child) => {
                replica.child = Some(child);
                replica.instance_id = instance_id;
                replica.spec = spec;
                replica.started = Instant::now();
                replica.state = State::Starting;
                replica.incarnation += 1;
                println!(
                    "  ↻ {} #{} restarted (restart {})",
                    name, replica.ordinal, replica.restarts
                );
                self.probe(key);
            }
            Err(error) => {
                let delay = backoff(replica.streak);
                replica.streak += 1;
                replica.last_exit = Some(format!("could not start: {error:#}"));
                replica.state = State::Restarting {
                    until: Instant::now() + delay,
                };
                eprintln!("  ✗ could not restart {name}: {error:#}");
            }
        }
    }

    /// Adopts a changed stratus.toml; refuses one that does not parse, keeping what runs.
    fn check_file(&mut self) {
        let Ok(text) = std::fs::read_to_string(&self.file) else {
            return; // Missing or mid-replace: look again next time.
        };
        if text == self.file_text {
            return;
        }
        self.file_text = text.clone();
        let manifest = match Manifest::parse(&text) {
            Ok(manifest) => manifest,
            Err(error) => {
                eprintln!(
                    "  ✗ {} refused: {error:#}; everything keeps running as it was",
                    self.file.display()
                );
                return;
            }
        };
        let mut changes = Vec::new();
        let mut desired = manifest.clone();
        for spec in &mut desired.components {
            match self.file_manifest.component(&spec.name) {
                None => changes.push(format!("{} added", spec.name)),
                Some(before) => {
                    if before.replicas == spec.replicas {
                        // Unchanged in the file: keep a count set with `stratus scale`.
                        if let Some(now) = self.desired.component(&spec.name) {
                            spec.replicas = now.replicas;
                        }
                    } else {
                        changes.push(format!(
                            "{} replicas {} → {}",
                            spec.name, before.replicas, spec.replicas
                        ));
                    }
                    if before.env != spec.env || before.command != spec.command {
                        changes.push(format!("{} env or command changed", spec.name));
                    }
                }
            }
        }
        for before in &self.file_manifest.components {
            if manifest.component(&before.name).is_none() {
                changes.push(format!("{} removed", before.name));
            }
        }
        // The gateway watches this copy and reloads its routes when they differ.
        if let Err(error) = std::fs::write(&self.launcher.routes_file, &text) {
            eprintln!("  ✗ could not hand the new routes to the gateway: {error}");
        }
        if changes.is_empty() {
            changes.push("routes or comments only".into());
        }
        println!(
            "  ↻ {} changed: {}",
            self.file.display(),
            changes.join("; ")
        );
        self.file_manifest = manifest;
        self.desired = desired;
    }

    fn scale(&mut self, changes: BTreeMap<String, usize>) -> Result<Vec<String>, Refusal> {
        if changes.is_empty() {
            return Err(Refusal::Invalid("say which component to scale".into()));
        }
        for (name, &count) in &changes {
            let Some(spec) = self.desired.component(name) else {
                return Err(Refusal::NotFound(format!(
                    "there is no component `{name}` (see `stratus status`)"
                )));
            };
            if count > MAX_REPLICAS {
                return Err(Refusal::Invalid(format!(
                    "{name}: at most {MAX_REPLICAS} replicas"
                )));
            }
            if spec.fixed_port() && count > 1 {
                return Err(Refusal::Invalid(format!(
                    "{name} listens on a fixed port: it runs 0 or 1 replica"
                )));
            }
        }
        let mut done = Vec::new();
        for (name, count) in changes {
            if let Some(spec) = self.desired.components.iter_mut().find(|c| c.name == name) {
                done.push(format!("{name}: {} → {count}", spec.replicas));
                spec.replicas = count;
            }
        }
        println!("  ↕ scale {}", done.join(", "));
        self.reconcile();
        Ok(done)
    }

    fn begin_rollout(&mut self, name: &str) -> Result<RolloutPlan, Refusal> {
        let Some(spec) = self.desired.component(name) else {
            return Err(Refusal::NotFound(format!(
                "there is no component `{name}` (see `stratus status`)"
            )));
        };
        if !self.rolling.insert(name.to_string()) {
            return Err(Refusal::Conflict(format!(
                "a rollout of {name} is already under way"
            )));
        }
        let old = self
            .replicas
            .iter()
            .filter(|r| r.spec.name == name && r.alive())
            .map(|r| r.view(&self.launcher))
            .collect();
        Ok(RolloutPlan {
            old,
            routed: self.desired.routed(name),
            fixed_port: spec.fixed_port(),
        })
    }

    /// Makes the running replicas match the desired state.
    fn reconcile(&mut self) {
        for spec in self.desired.components.clone() {
            if self.rolling.contains(&spec.name) {
                continue;
            }
            let mut alive: Vec<usize> = (0..self.replicas.len())
                .filter(|&i| self.replicas[i].spec.name == spec.name && self.replicas[i].alive())
                .collect();
            if alive.len() < spec.replicas {
                for _ in alive.len()..spec.replicas {
                    match self.add_replica(&spec, true) {
                        Ok(key) => {
                            if let Some(r) = self.replicas.iter().find(|r| r.key == key) {
                                println!("  + {} #{} started", spec.name, r.ordinal);
                            }
                        }
                        Err(error) => {
                            eprintln!("  ✗ could not start {}: {error:#}", spec.name);
                            break;
                        }
                    }
                }
                continue;
            }
            if alive.len() > spec.replicas {
                // Scale down newest first: the oldest have proven themselves.
                alive.sort_by_key(|&i| std::cmp::Reverse(self.replicas[i].key));
                for &i in &alive[..alive.len() - spec.replicas] {
                    let replica = &mut self.replicas[i];
                    println!(
                        "  - {} #{} stopping (scale down)",
                        spec.name, replica.ordinal
                    );
                    terminate(replica);
                }
                continue;
            }
            let stale = alive.iter().any(|&i| {
                let running = &self.replicas[i].spec;
                running.env != spec.env || running.command != spec.command
            });
            if stale {
                if let Ok(plan) = self.begin_rollout(&spec.name) {
                    println!("  ↻ {}: new env or command; rolling restart", spec.name);
                    let launcher = self.launcher.clone();
                    let handle = self.handle.clone();
                    let name = spec.name.clone();
                    tokio::spawn(async move {
                        let (lines, mut read) = mpsc::channel(16);
                        let rollout = crate::rollout::run(handle, launcher, name, plan, lines);
                        let print = async {
                            while let Some(line) = read.recv().await {
                                print!("  {line}");
                            }
                        };
                        tokio::join!(rollout, print);
                    });
                }
            }
        }
        // Components no longer in the file: stop what is left of them.
        for replica in &mut self.replicas {
            if replica.alive() && self.desired.component(&replica.spec.name).is_none() {
                println!(
                    "  - {} #{} stopping (removed from the file)",
                    replica.spec.name, replica.ordinal
                );
                terminate(replica);
            }
        }
    }

    fn status(&self) -> StatusView {
        let mut components: Vec<ComponentView> = self
            .desired
            .components
            .iter()
            .map(|spec| ComponentView {
                name: spec.name.clone(),
                desired: spec.replicas,
                rolling_out: self.rolling.contains(&spec.name),
                replicas: Vec::new(),
            })
            .collect();
        let mut replicas: Vec<&Replica> = self.replicas.iter().collect();
        replicas.sort_by_key(|r| (r.ordinal, r.key));
        for replica in replicas {
            let name = &replica.spec.name;
            let index = match components.iter().position(|c| &c.name == name) {
                Some(index) => index,
                None => {
                    components.push(ComponentView {
                        name: name.clone(),
                        desired: 0,
                        rolling_out: false,
                        replicas: Vec::new(),
                    });
                    components.len() - 1
                }
            };
            components[index]
                .replicas
                .push(replica.view(&self.launcher));
        }
        StatusView {
            file: self.file.display().to_string(),
            components,
        }
    }

    /// Stops everything, one component at a time in reverse file order: the gateway before the
    /// services, the registry last. The replicas of one component stop together.
    pub async fn stop_all(&mut self) {
        let order: Vec<String> = self
            .desired
            .components
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let rank = |name: &str| order.iter().position(|n| n == name).unwrap_or(usize::MAX);
        self.replicas
            .sort_by_key(|r| std::cmp::Reverse(rank(&r.spec.name)));
        let mut groups: Vec<Vec<Replica>> = Vec::new();
        for replica in self.replicas.drain(..) {
            match groups.last_mut() {
                Some(group) if group[0].spec.name == replica.spec.name => group.push(replica),
                _ => groups.push(vec![replica]),
            }
        }
        for mut group in groups {
            for replica in &mut group {
                terminate(replica);
            }
            for replica in &mut group {
                let Some(child) = replica.child.as_mut() else {
                    continue;
                };
                if tokio::time::timeout(STOP_TIMEOUT, child.wait())
                    .await
                    .is_err()
                {
                    eprintln!(
                        "  {} #{} did not stop in time; killing it",
                        replica.spec.name, replica.ordinal
                    );
                    let _ = child.kill().await;
                }
            }
        }
    }
}

/// SIGTERM: the replica deregisters, drains and exits; `reap` notices.
fn terminate(replica: &mut Replica) {
    if !replica.alive() {
        return;
    }
    replica.state = State::Stopping {
        since: Instant::now(),
        killed: false,
    };
    // Waiting out a back-off, nothing runs: `reap` forgets it.
    if let Some(pid) = replica.child.as_ref().and_then(|c| c.id()) {
        #[cfg(unix)]
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
}

/// 1 s, 2 s, 4 s ... capped.
fn backoff(streak: u32) -> Duration {
    Duration::from_secs(1u64 << streak.min(5)).min(MAX_BACKOFF)
}

/// "exit code 1", "killed by SIGKILL".
pub fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                libc::SIGKILL => "SIGKILL".to_string(),
                libc::SIGTERM => "SIGTERM".to_string(),
                libc::SIGINT => "SIGINT".to_string(),
                libc::SIGSEGV => "SIGSEGV".to_string(),
                libc::SIGABRT => "SIGABRT".to_string(),
                other => format!("signal {other}"),
            };
            return format!("killed by {name}");
        }
    }
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let delays: Vec<u64> = (0..8).map(|s| backoff(s).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}

//! Actors, their mailboxes and their supervision: one task per actor takes messages
//! from the mailbox in order; an actor that fails (returns an error or panics) is rebuilt
//! by its factory, one-for-one, at most [`Restart::max_restarts`] times per
//! [`Restart::window`]. The mailbox survives restarts; the message being handled when
//! the actor failed is not retried (at most once), and an ask among them is refused with
//! [`Refusal::Failed`].

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use keys::Path;
use protocols::actor::Refusal;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::mailbox::{Mailbox, Taken};
use super::sessions::{Served, Sessions};
use super::{Incoming, Inner, Sender, SpawnError, Spec, other_role, write};

/// An actor: state plus a handler for one message at a time.
pub trait Actor: Send + 'static {
    /// Handles one message. An error (or a panic) makes the supervisor rebuild the actor.
    fn handle(
        &mut self,
        ctx: &Context,
        message: Incoming,
    ) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// Why an actor failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One-for-one restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// Restarts allowed within [`Restart::window`]; one more stops the actor.
    pub max_restarts: u32,
    /// The window.
    pub window: Duration,
    /// Pause before each restart.
    pub backoff: Duration,
}

impl Restart {
    /// Never restart: the first failure stops the actor.
    pub fn never() -> Self {
        Restart {
            max_restarts: 0,
            window: Duration::from_secs(1),
            backoff: Duration::ZERO,
        }
    }
}

impl Default for Restart {
    /// At most 5 restarts in 10 s, 100 ms apart.
    fn default() -> Self {
        Restart {
            max_restarts: 5,
            window: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
        }
    }
}

/// What an actor's handler sees besides the message.
#[derive(Debug, Clone)]
pub struct Context {
    sender: Sender,
}

impl Context {
    /// The actor's path.
    pub fn path(&self) -> &Arc<Path> {
        self.sender.path()
    }

    /// Sends as the actor.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }
}

/// An actor's state, as `btnode status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorStatus {
    /// The actor's path.
    pub path: String,
    /// The protocols it speaks (`""`: untyped).
    pub protocols: Vec<String>,
    /// `running`, `restarting` or `stopped`.
    pub state: String,
    /// Messages handled.
    pub handled: u64,
    /// Failures (errors and panics).
    pub failures: u64,
    /// Restarts.
    pub restarts: u64,
    /// The last failure.
    pub last_failure: Option<String>,
    /// Messages waiting in the mailbox.
    pub queued: usize,
}

#[derive(Debug, Default)]
struct Counters {
    state: &'static str,
    failures: u64,
    restarts: u64,
    last_failure: Option<String>,
}

/// The runtime's side of one actor.
pub(crate) struct Slot {
    pub(crate) path: Arc<Path>,
    pub(crate) sessions: Sessions,
    mailbox: Mailbox,
    counters: Mutex<Counters>,
    handled: AtomicU64,
    /// Set while the handler runs; replies dropped meanwhile wait for its outcome.
    /// The delivery number of the ask being handled (0: none, or a tell); a reply
    /// handle of that ask dropped meanwhile waits for the handler's outcome.
    handling: AtomicU64,
    /// Numbers deliveries of asks, from 1.
    deliveries: AtomicU64,
    orphans: Mutex<Vec<super::ReplyTo>>,
    has_orphans: AtomicBool,
    stopped: Notify,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("path", &self.path.to_string())
            .finish_non_exhaustive()
    }
}

impl Slot {
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn status(&self) -> ActorStatus {
        let c = self.counters();
        ActorStatus {
            path: self.path.to_string(),
            protocols: self.sessions.protocols(),
            state: c.state.into(),
            handled: self.handled.load(Ordering::Relaxed),
            failures: c.failures,
            restarts: c.restarts,
            last_failure: c.last_failure.clone(),
            queued: self.mailbox.queued(),
        }
    }

    /// Whether the actor has stopped (a new one may take the path).
    pub(crate) fn is_stopped(&self) -> bool {
        self.mailbox.is_closed() || self.stopping.load(Ordering::Acquire)
    }

    /// Stops the actor: what its mailbox holds is dropped at once (its asks refused),
    /// senders waiting for room are refused, and a handler running is dropped at its
    /// next await (its ask, if any, refused with the actor's `stopped` failure), so a
    /// stuck handler does not hold up the stream readers waiting to hand it messages.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        drop(self.mailbox.close());
        self.stopped.notify_one();
    }

    /// Checks `incoming` against the actor's sessions and queues it, waiting while the
    /// mailbox is full. On refusal the message's reply handle is disarmed: the caller
    /// reports the refusal.
    pub(crate) async fn deliver(&self, inner: &Inner, incoming: Incoming) -> Result<(), Refusal> {
        if self.is_stopped() {
            disarm(incoming);
            return Err(self.gone());
        }
        let mut incoming = incoming;
        self.admit(&mut self.sessions.receiving(), &mut incoming)?;
        match self.mailbox.push_one(incoming).await {
            Ok(()) => {
                inner.delivered.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(incoming) => {
                disarm(incoming);
                Err(self.gone())
            }
        }
    }

    /// Checks each of `batch` against the actor's sessions (one lock for them all) and
    /// queues those that pass, in order, waiting while the mailbox is full. Returns the
    /// refused ones by their index in `batch`, their reply handles disarmed; `batch` is
    /// left empty.
    pub(crate) async fn deliver_all(
        &self,
        inner: &Inner,
        batch: &mut Vec<Incoming>,
    ) -> Vec<(usize, Refusal)> {
        let mut refused = Vec::new();
        if self.is_stopped() {
            for (i, incoming) in batch.drain(..).enumerate() {
                disarm(incoming);
                refused.push((i, self.gone()));
            }
            return refused;
        }
        let read = batch.len();
        {
            let mut receiving = self.sessions.receiving();
            let mut i = 0;
            batch.retain_mut(|incoming| {
                let index = i;
                i += 1;
                match self.admit(&mut receiving, incoming) {
                    Ok(()) => true,
                    Err(refusal) => {
                        refused.push((index, refusal));
                        false
                    }
                }
            });
        }
        let passed = batch.len();
        let result = self.mailbox.push(batch).await;
        // On `Closed` (the actor stopped meanwhile) the first of those that passed went
        // in, and what is left in `batch` is refused. Their indices are the last of
        // those not refused above (found only here: a list of the indices that pass,
        // made for every batch, was a large allocation per batch, and glibc merges
        // every small block freed since at each large one).
        let queued = passed - batch.len();
        inner.delivered.fetch_add(queued as u64, Ordering::Relaxed);
        if result.is_err() {
            // `refused` is in index order here.
            let not_queued: Vec<usize> = (0..read)
                .filter(|i| refused.binary_search_by_key(i, |(j, _)| *j).is_err())
                .skip(queued)
                .collect();
            for (incoming, i) in batch.drain(..).zip(not_queued) {
                disarm(incoming);
                refused.push((i, self.gone()));
            }
            refused.sort_by_key(|(i, _)| *i);
        }
        refused
    }

    /// Checks `incoming` against the actor's sessions and numbers it if it is an ask; a
    /// refused message's reply handle is disarmed (the caller reports the refusal).
    fn admit(
        &self,
        receiving: &mut super::sessions::Receiving<'_>,
        incoming: &mut Incoming,
    ) -> Result<(), Refusal> {
        let checked = receiving.check(
            incoming.peer(),
            incoming.protocol(),
            incoming.session,
            incoming.role(),
            &incoming.label,
        );
        if let Some(reply) = &mut incoming.reply {
            match checked {
                Ok(()) => reply.delivery = self.deliveries.fetch_add(1, Ordering::Relaxed),
                Err(_) => reply.back = None,
            }
        }
        checked
    }

    fn gone(&self) -> Refusal {
        Refusal::NoSuchActor {
            path: self.path.to_string(),
        }
    }

    /// The refusal for an ask dropped unanswered: decided after the handler returns when
    /// it is running (it may be failing), at once otherwise.
    pub(crate) fn unanswered(&self) -> Refusal {
        Refusal::NoReply {
            actor: self.path.to_string(),
        }
    }

    /// Whether a dropped reply should wait for the handler's outcome; takes it if so.
    pub(crate) fn adopt(&self, orphan: &mut super::ReplyTo) -> bool {
        // Only the reply handle of the message being handled: one kept from an earlier
        // message and dropped now is not this failure's.
        if orphan.delivery == 0 || self.handling.load(Ordering::Acquire) != orphan.delivery {
            return false;
        }
        let taken = super::ReplyTo {
            id: orphan.id,
            back: orphan.back.take(),
            actor: orphan.actor.clone(),
            asker: orphan.asker.clone(),
            protocol: orphan.protocol.clone(),
            session: orphan.session,
            peer: orphan.peer,
            delivery: orphan.delivery,
        };
        self.orphans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(taken);
        self.has_orphans.store(true, Ordering::Release);
        true
    }

    fn settle_orphans(&self, failure: Option<&str>) {
        // A load first: the common case (no orphans) writes nothing.
        if !self.has_orphans.load(Ordering::Acquire)
            || !self.has_orphans.swap(false, Ordering::AcqRel)
        {
            return;
        }
        let orphans: Vec<super::ReplyTo> = std::mem::take(
            &mut *self
                .orphans
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for mut orphan in orphans {
            let refusal = match failure {
                Some(reason) => Refusal::Failed {
                    actor: self.path.to_string(),
                    reason: protocols::actor::failure_reason(reason),
                },
                None => self.unanswered(),
            };
            orphan.refuse(refusal);
        }
    }
}

fn disarm(mut incoming: Incoming) {
    if let Some(mut reply) = incoming.reply.take() {
        reply.back = None;
    }
}

pub(crate) async fn spawn<A, F>(inner: &Arc<Inner>, spec: Spec, make: F) -> Result<(), SpawnError>
where
    A: Actor,
    F: Fn() -> A + Send + Sync + 'static,
{
    if !inner.holds(&spec.path) {
        return Err(SpawnError::NotAuthorized(spec.path.to_string()));
    }
    let mut served = HashMap::new();
    for (protocol, role) in &spec.serves {
        if protocol.local(role).is_none() {
            return Err(SpawnError::Protocol(format!(
                "protocol {} has no role {role}",
                protocol.name()
            )));
        }
        let peer_role = other_role(protocol, role).ok_or_else(|| {
            SpawnError::Protocol(format!("{} is not a two-party protocol", protocol.name()))
        })?;
        let entry = Served {
            protocol: protocol.clone(),
            role: role.clone(),
            peer_role,
        };
        if served.insert(protocol.name().to_string(), entry).is_some() {
            return Err(SpawnError::Protocol(format!(
                "protocol {} is declared twice",
                protocol.name()
            )));
        }
    }
    let path = Arc::new(spec.path.clone());
    let slot = Arc::new(Slot {
        path: path.clone(),
        sessions: Sessions::new(
            path.to_string(),
            served,
            spec.untyped,
            inner.config.max_sessions,
        ),
        mailbox: Mailbox::new(inner.config.mailbox),
        counters: Mutex::new(Counters {
            state: "running",
            ..Counters::default()
        }),
        handled: AtomicU64::new(0),
        handling: AtomicU64::new(0),
        deliveries: AtomicU64::new(1),
        orphans: Mutex::new(Vec::new()),
        has_orphans: AtomicBool::new(false),
        stopped: Notify::new(),
        stopping: AtomicBool::new(false),
    });
    {
        let mut actors = write(&inner.actors);
        // A stopped actor (failed too often) leaves its path to a new one.
        if actors.get(&path).is_some_and(|slot| !slot.is_stopped()) {
            return Err(SpawnError::Taken(path.to_string()));
        }
        actors.insert(path.clone(), slot.clone());
    }
    // From here the mailbox closes however this ends: a failed or cancelled registration
    // leaves no open mailbox behind for senders that found the slot meanwhile.
    let close = CloseOnExit(slot.clone());
    if spec.register {
        let registered = match inner.chain_for(&path) {
            Some(chain) => inner
                .node
                .register((*path).clone(), chain)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Err("no chain covers it".to_string()),
        };
        if let Err(reason) = registered {
            let mut actors = write(&inner.actors);
            if actors.get(&path).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                actors.remove(&path);
            }
            drop(actors);
            return Err(SpawnError::Register {
                path: path.to_string(),
                reason,
            });
        }
    }
    let ctx = Context {
        sender: Sender {
            inner: inner.clone(),
            from: path.clone(),
        },
    };
    let span = tracing::info_span!("actor", path = %path);
    tokio::spawn(tracing::Instrument::instrument(
        supervise(slot, close, make, ctx, spec.restart),
        span,
    ));
    Ok(())
}

/// Closes the actor's mailbox however its spawn or its task ends (registration failed or
/// cancelled, stopped, failed too often, or dropped with the runtime); what is still
/// queued is dropped, refusing its asks.
struct CloseOnExit(Arc<Slot>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        drop(self.0.mailbox.close());
    }
}

async fn supervise<A, F>(
    slot: Arc<Slot>,
    _close: CloseOnExit,
    make: F,
    ctx: Context,
    policy: Restart,
) where
    A: Actor,
    F: Fn() -> A + Send + Sync + 'static,
{
    let mut restarts: Vec<Instant> = Vec::new();
    // Messages taken from the mailbox, handled in order; kept across restarts.
    let mut batch = std::collections::VecDeque::new();
    let mut handled = slot.handled.load(Ordering::Relaxed);
    loop {
        let mut actor = make();
        let failure = loop {
            if slot.stopping.load(Ordering::Acquire) {
                slot.counters().state = "stopped";
                return;
            }
            let Some(message) = batch.pop_front() else {
                match slot.mailbox.take(&mut batch) {
                    Taken::Some => {}
                    Taken::Empty => {
                        tokio::select! {
                            biased;
                            () = slot.stopped.notified() => {}
                            () = slot.mailbox.ready() => {}
                        }
                    }
                    Taken::Closed => {
                        slot.counters().state = "stopped";
                        return;
                    }
                }
                continue;
            };
            slot.mailbox.holding(batch.len());
            let delivery = message.reply.as_ref().map_or(0, |r| r.delivery);
            slot.handling.store(delivery, Ordering::Release);
            // Most handlers finish at their first poll: only one that waits is raced
            // against a stop (setting that up for every message cost about 80 ns of CPU
            // per remote tell, against ~450 ns in all).
            // The handler is dropped at the end of this block, while `handling` still
            // names its message: a reply handle it drops, stopped or not, is settled by
            // the outcome below (a stop's: `STOPPED`).
            let handled_or_stopped = {
                let handling = AssertUnwindSafe(actor.handle(&ctx, message)).catch_unwind();
                tokio::pin!(handling);
                match futures::poll!(handling.as_mut()) {
                    std::task::Poll::Ready(outcome) => Some(outcome),
                    std::task::Poll::Pending => tokio::select! {
                        biased;
                        outcome = handling => Some(outcome),
                        () = slot.stopped.notified() => None,
                    },
                }
            };
            slot.handling.store(0, Ordering::Release);
            let Some(outcome) = handled_or_stopped else {
                // Stopped while handling: the handler and its message are dropped.
                slot.settle_orphans(Some(STOPPED));
                slot.counters().state = "stopped";
                return;
            };
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(failure)) => Some(failure.0),
                Err(panic) => Some(format!("panicked: {}", panic_message(&*panic))),
            };
            slot.settle_orphans(failure.as_deref());
            // This task is the only writer.
            handled += 1;
            slot.handled.store(handled, Ordering::Relaxed);
            if let Some(reason) = failure {
                let mut c = slot.counters();
                c.failures += 1;
                c.last_failure = Some(reason.clone());
                break reason;
            }
        };
        let now = Instant::now();
        restarts.retain(|at| now.duration_since(*at) < policy.window);
        if restarts.len() as u32 >= policy.max_restarts {
            tracing::error!(reason = %failure, restarts = restarts.len(), "actor failed too often; stopped");
            slot.counters().state = "stopped";
            // Queued messages are dropped (`CloseOnExit`): their asks are refused as
            // unanswered.
            return;
        }
        tracing::warn!(reason = %failure, "actor failed; restarting");
        restarts.push(now);
        {
            let mut c = slot.counters();
            c.state = "restarting";
            c.restarts += 1;
        }
        // A stop during the backoff ends it: what was taken from the mailbox is dropped
        // (its asks refused) at once, and no new actor is made.
        tokio::select! {
            biased;
            () = slot.stopped.notified() => {}
            () = tokio::time::sleep(policy.backoff) => {}
        }
        if slot.stopping.load(Ordering::Acquire) {
            slot.counters().state = "stopped";
            return;
        }
        slot.counters().state = "running";
    }
}

/// The failure an ask is refused with when its actor is stopped while handling it.
const STOPPED: &str = "stopped while handling the message";

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic".into()
    }
}

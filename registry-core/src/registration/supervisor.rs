//! The supervisor: one task per (service, id) of a registry handle, applying that
//! registration's calls in order and writing it again whenever it is lost.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{RegistrationState, RegistrationStatus, Store};
use crate::telemetry::{self, StateGauge};
use crate::validate::{validate_id, validate_name};
use crate::{Backoff, Error, Result, ServiceInstance};

/// The first pause before writing a lost registration again (jittered, doubling up to
/// [`Store::retry_cap`]).
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// How many deregistered ids a handle remembers (see `Entries::removed`); past this it
/// forgets them all, and a deregister of one of them asks the registry again.
const MAX_REMEMBERED: usize = 4096;

type Key = (String, String);

enum Command {
    Put(ServiceInstance, oneshot::Sender<Result<()>>),
    Remove(oneshot::Sender<Result<()>>),
}

struct Entry<L> {
    /// Tells this entry from a later one of the same key.
    serial: u64,
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<RegistrationState>,
    /// The lease of the value written last, while it is held.
    lease: watch::Receiver<Option<L>>,
    task: AbortHandle,
}

struct Entries<L> {
    map: HashMap<Key, Entry<L>>,
    /// What this handle deregistered and has not registered since: a later deregister of
    /// it is done already, whatever a lagging listing still shows.
    removed: HashSet<Key>,
    closed: bool,
    serial: u64,
}

impl<L> Default for Entries<L> {
    fn default() -> Self {
        Entries {
            map: HashMap::new(),
            removed: HashSet::new(),
            closed: false,
            serial: 0,
        }
    }
}

type Shared<L> = Arc<Mutex<Entries<L>>>;

fn lock<L>(entries: &Mutex<Entries<L>>) -> MutexGuard<'_, Entries<L>> {
    entries.lock().unwrap_or_else(|p| p.into_inner())
}

/// The registrations of one registry handle, kept by the core over a backend's [`Store`].
///
/// - One task per (service, id): every register and deregister of one id is applied in call
///   order, and the latest value is the one written (again).
/// - A registration that is lost — lease or session gone, entry deleted from outside, server
///   wiped, restarted or unreachable — is written again with jittered back-off capped at the
///   store's keep-alive interval, forever, until it is deregistered.
/// - Registrations proceed concurrently: no lock is held across a call to the store.
/// - A dropped `register` future leaves either nothing or a tracked registration: once the
///   call reached the supervisor, its task finishes the write and keeps it.
/// - [`close`](Self::close) deregisters everything and waits; dropping stops every task at
///   once (keep-alives stop: each registration then leaves the registry when its lease,
///   session, check or connection runs out).
pub struct Registrations<S: Store> {
    store: Arc<S>,
    entries: Shared<S::Lease>,
}

impl<S: Store> fmt::Debug for Registrations<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registrations")
            .field("held", &lock(&self.entries).map.len())
            .finish_non_exhaustive()
    }
}

impl<S: Store> Drop for Registrations<S> {
    fn drop(&mut self) {
        self.abort();
    }
}

impl<S: Store> Registrations<S> {
    /// Keeps registrations through `store`.
    pub fn new(store: S) -> Self {
        Registrations {
            store: Arc::new(store),
            entries: Shared::default(),
        }
    }

    /// The backend's store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Registers `instance`, or updates it when this handle holds its id already, and waits
    /// until it is written.
    ///
    /// When the first write fails, nothing stays behind: whatever the write may have left is
    /// removed and the id is not held. When an update fails with a temporary error, the
    /// registration is held still and the new value written as soon as the registry answers
    /// (its state is [`RegistrationState::Lost`] meanwhile); a refused update keeps the
    /// previous value.
    pub async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        instance.validate()?;
        let (ack, done) = oneshot::channel();
        {
            let mut entries = lock(&self.entries);
            if entries.closed {
                return Err(Error::Closed);
            }
            let key = (instance.name.clone(), instance.id.clone());
            entries.removed.remove(&key);
            let entry = match entries.map.get(&key) {
                Some(entry) => entry,
                None => {
                    let entry = self.spawn(&mut entries, key.clone());
                    entries.map.entry(key).or_insert(entry)
                }
            };
            entry
                .commands
                .send(Command::Put(instance.clone(), ack))
                .map_err(|_| Error::Closed)?;
        }
        done.await.unwrap_or(Err(Error::Closed))
    }

    /// Deregisters `instance` (matched by service and id) and waits until it is removed.
    ///
    /// The rule for an instance this handle does not hold (registered by another process or
    /// handle): nothing is changed, and the call fails with [`Error::NotOwned`] while the
    /// registry lists it; an instance listed nowhere is already deregistered (`Ok`), and so
    /// is one this handle deregistered before (a registry whose listing lags may still show
    /// it). When this returns, [`status`](Self::status) of the id is `None` (unless another
    /// register of it came meanwhile).
    pub async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        validate_name(&instance.name)?;
        validate_id(&instance.id)?;
        let done = {
            let entries = lock(&self.entries);
            let key = (instance.name.clone(), instance.id.clone());
            match entries.map.get(&key) {
                Some(entry) => {
                    let (ack, done) = oneshot::channel();
                    entry
                        .commands
                        .send(Command::Remove(ack))
                        .map_err(|_| Error::Closed)?;
                    Some(done)
                }
                None if entries.removed.contains(&key) => return Ok(()),
                None => None,
            }
        };
        match done {
            Some(done) => done.await.unwrap_or(Err(Error::Closed)),
            None if self.store.contains(&instance.name, &instance.id).await?
                // A register of this handle that came while the registry was asked is
                // what it lists: this deregister came before that register.
                && !self.holds_or_removed(&instance.name, &instance.id) =>
            {
                Err(Error::NotOwned {
                    name: instance.name.clone(),
                    id: instance.id.clone(),
                })
            }
            None => Ok(()),
        }
    }

    /// Whether this handle holds (`name`, `id`), or deregistered it last.
    fn holds_or_removed(&self, name: &str, id: &str) -> bool {
        let entries = lock(&self.entries);
        let key = (name.to_owned(), id.to_owned());
        entries.map.contains_key(&key) || entries.removed.contains(&key)
    }

    /// Follows the registration of (`name`, `id`) held by this handle; `None` when it holds
    /// none.
    pub fn status(&self, name: &str, id: &str) -> Option<RegistrationStatus> {
        let entries = lock(&self.entries);
        let entry = entries.map.get(&(name.to_owned(), id.to_owned()))?;
        Some(RegistrationStatus::new(entry.state.clone()))
    }

    /// The lease the registration of (`name`, `id`) is held under now (`None` while it is
    /// not written, or when this handle holds no such registration): for diagnostics and
    /// backend tests.
    pub fn lease(&self, name: &str, id: &str) -> Option<S::Lease> {
        let entries = lock(&self.entries);
        let entry = entries.map.get(&(name.to_owned(), id.to_owned()))?;
        let lease = entry.lease.borrow().clone();
        lease
    }

    /// Stops every registration's task at once, without deregistering (what dropping does);
    /// later registers fail with [`Error::Closed`]. Keep-alives stop: each registration
    /// leaves the registry when its lease, session, check or connection runs out.
    pub fn abort(&self) {
        let mut entries = lock(&self.entries);
        entries.closed = true;
        for (_, entry) in entries.map.drain() {
            entry.task.abort();
        }
    }

    /// How many registrations this handle holds.
    pub fn len(&self) -> usize {
        lock(&self.entries).map.len()
    }

    /// Whether this handle holds no registration.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deregisters everything this handle holds, concurrently, and waits; later registers
    /// fail with [`Error::Closed`]. Returns the first failure (the others are logged).
    pub async fn close(&self) -> Result<()> {
        let pending: Vec<_> = {
            let mut entries = lock(&self.entries);
            entries.closed = true;
            entries
                .map
                .values()
                .filter_map(|entry| {
                    let (ack, done) = oneshot::channel();
                    entry.commands.send(Command::Remove(ack)).ok()?;
                    Some(done)
                })
                .collect()
        };
        let mut first = Ok(());
        for result in futures::future::join_all(pending).await {
            if let Err(e) = result.unwrap_or(Err(Error::Closed)) {
                tracing::warn!(error = %e, "deregister on close failed");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    fn spawn(&self, entries: &mut Entries<S::Lease>, key: Key) -> Entry<S::Lease> {
        entries.serial += 1;
        let serial = entries.serial;
        let (commands, rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(RegistrationState::Pending);
        let (lease_tx, lease) = watch::channel(None);
        let task = Task {
            store: self.store.clone(),
            entries: Arc::downgrade(&self.entries),
            key,
            serial,
            commands: rx,
            queued: VecDeque::new(),
            state: state_tx,
            gauge: StateGauge::new(self.store.backend()),
            lease: lease_tx,
        };
        let task = tokio::spawn(task.run()).abort_handle();
        Entry {
            serial,
            commands,
            state,
            lease,
            task,
        }
    }
}

/// What happened next to one registration.
enum Event {
    Command(Option<Command>),
    Lost(Error),
    Retry,
}

/// A registration being written again after it was lost.
struct Retrying {
    at: Instant,
    attempt: u32,
}

struct Task<S: Store> {
    store: Arc<S>,
    entries: Weak<Mutex<Entries<S::Lease>>>,
    key: Key,
    serial: u64,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Commands taken off the channel while deciding whether to end.
    queued: VecDeque<Command>,
    state: watch::Sender<RegistrationState>,
    /// This registration's share of the registrations-by-state gauge.
    gauge: StateGauge,
    lease: watch::Sender<Option<S::Lease>>,
}

impl<S: Store> Task<S> {
    /// Moves the registration to `state`, for its followers and in the metrics.
    fn set_state(&mut self, state: RegistrationState) {
        self.gauge.set(&state);
        self.state.send_replace(state);
    }

    /// Counts a failed call to the store.
    fn failed(&self, operation: &'static str, error: &Error) {
        telemetry::error(self.store.backend(), operation, error);
    }

    /// Whether the task may end: no command is waiting. Removes its entry when so, under the
    /// same lock that callers send under, so that no command is ever left unanswered; called
    /// before the last command is answered, so that its caller finds the entry gone.
    /// `removed`: the registration was deregistered (not a failed first write).
    fn finish(&mut self, removed: bool) -> bool {
        let Some(entries) = self.entries.upgrade() else {
            return true;
        };
        let mut entries = lock(&entries);
        if let Ok(command) = self.commands.try_recv() {
            self.queued.push_back(command);
            return false;
        }
        if entries
            .map
            .get(&self.key)
            .is_some_and(|e| e.serial == self.serial)
        {
            entries.map.remove(&self.key);
        }
        if removed {
            if entries.removed.len() >= MAX_REMEMBERED {
                entries.removed.clear();
            }
            entries.removed.insert(self.key.clone());
        }
        true
    }

    fn hold(&self, instance: &ServiceInstance, lease: &S::Lease) -> BoxFuture<'static, Error> {
        self.lease.send_replace(Some(lease.clone()));
        let store = self.store.clone();
        let instance = instance.clone();
        let lease = lease.clone();
        Box::pin(async move { store.hold(&instance, &lease).await })
    }

    async fn run(mut self) {
        self.gauge.set(&RegistrationState::Pending);
        let cap = self.store.retry_cap().max(Duration::from_millis(10));
        let mut backoff = Backoff::new(FIRST_RETRY.min(cap), cap);
        let (service, id) = self.key.clone();
        // The value asked for last, and the value written last with its lease.
        let mut desired: Option<ServiceInstance> = None;
        let mut written: Option<(ServiceInstance, S::Lease)> = None;
        let mut holding: Option<BoxFuture<'static, Error>> = None;
        let mut held_since = Instant::now();
        let mut retrying: Option<Retrying> = None;
        loop {
            let event = match self.queued.pop_front() {
                Some(command) => Event::Command(Some(command)),
                None => tokio::select! {
                    biased;
                    command = self.commands.recv() => Event::Command(command),
                    error = lost(&mut holding) => Event::Lost(error),
                    () = retry_at(&retrying) => Event::Retry,
                },
            };
            match event {
                // Every sender is gone: the handle was dropped.
                Event::Command(None) => return,
                Event::Command(Some(Command::Put(instance, ack))) => {
                    let lease = written.as_ref().map(|(_, lease)| lease);
                    let result = self.store.write(&instance, lease).await;
                    if let Err(error) = &result {
                        self.failed("register", error);
                    }
                    match result {
                        Ok(lease) => {
                            holding = Some(self.hold(&instance, &lease));
                            held_since = Instant::now();
                            desired = Some(instance.clone());
                            written = Some((instance, lease));
                            if retrying.take().is_some() {
                                tracing::info!(%service, %id, "registration restored");
                                telemetry::reregistered(self.store.backend());
                            }
                            self.set_state(RegistrationState::Registered);
                            let _ = ack.send(Ok(()));
                        }
                        Err(error) if written.is_none() && retrying.is_none() => {
                            // Never registered: leave nothing behind, hold nothing.
                            if let Err(e) = self.store.remove(&instance, None).await {
                                tracing::debug!(%service, %id, error = %e, "cleanup after a failed first write failed");
                            }
                            desired = None;
                            let ended = self.finish(false);
                            if ended {
                                self.set_state(RegistrationState::Deregistered);
                            }
                            let _ = ack.send(Err(error));
                            if ended {
                                return;
                            }
                        }
                        Err(error) if error.is_temporary() => {
                            // The registry is away: write the new value once it answers.
                            tracing::warn!(%service, %id, %error, "update failed; writing it again");
                            let _ = ack.send(Err(error.clone()));
                            desired = Some(instance);
                            holding = None;
                            self.lease.send_replace(None);
                            let attempt = retrying.as_ref().map_or(0, |r| r.attempt) + 1;
                            self.set_state(RegistrationState::Lost { attempt, error });
                            retrying = Some(Retrying {
                                at: Instant::now() + backoff.delay(),
                                attempt,
                            });
                        }
                        Err(error) => {
                            // Refused: the previous value stays (and is what a loss rewrites).
                            let _ = ack.send(Err(error));
                            desired = written.as_ref().map(|(instance, _)| instance.clone());
                        }
                    }
                }
                Event::Command(Some(Command::Remove(ack))) => {
                    let Some(instance) = written
                        .as_ref()
                        .map(|(instance, _)| instance.clone())
                        .or_else(|| desired.clone())
                    else {
                        // Nothing written (a first write failed): nothing to remove.
                        self.set_state(RegistrationState::Deregistered);
                        let ended = self.finish(true);
                        let _ = ack.send(Ok(()));
                        if ended {
                            return;
                        }
                        continue;
                    };
                    // Stop keeping it alive first, so that nothing writes it back.
                    holding = None;
                    self.lease.send_replace(None);
                    let was_retrying = retrying.take();
                    let lease = written.as_ref().map(|(_, lease)| lease);
                    match self.store.remove(&instance, lease).await {
                        Ok(()) => {
                            desired = None;
                            written = None;
                            self.set_state(RegistrationState::Deregistered);
                            let ended = self.finish(true);
                            let _ = ack.send(Ok(()));
                            if ended {
                                return;
                            }
                        }
                        Err(error) => {
                            self.failed("deregister", &error);
                            // Still ours, still kept: the caller may try again.
                            let _ = ack.send(Err(error));
                            match (&written, was_retrying) {
                                (_, Some(retry)) => retrying = Some(retry),
                                (Some((instance, lease)), None) => {
                                    holding = Some(self.hold(instance, lease));
                                }
                                (None, None) => {}
                            }
                        }
                    }
                }
                Event::Lost(error) => {
                    self.failed("keepalive", &error);
                    holding = None;
                    self.lease.send_replace(None);
                    tracing::warn!(%service, %id, %error, "registration lost; writing it again");
                    self.set_state(RegistrationState::Lost { attempt: 0, error });
                    // Lost soon after it was written: back off, so that the loop never spins.
                    let at = if held_since.elapsed() < cap {
                        Instant::now() + backoff.delay()
                    } else {
                        backoff.reset();
                        Instant::now()
                    };
                    retrying = Some(Retrying { at, attempt: 0 });
                }
                Event::Retry => {
                    let Some(instance) = desired.clone() else {
                        retrying = None;
                        continue;
                    };
                    let lease = written.as_ref().map(|(_, lease)| lease);
                    match self.store.write(&instance, lease).await {
                        Ok(lease) => {
                            tracing::info!(%service, %id, "registration restored");
                            telemetry::reregistered(self.store.backend());
                            holding = Some(self.hold(&instance, &lease));
                            held_since = Instant::now();
                            written = Some((instance, lease));
                            retrying = None;
                            self.set_state(RegistrationState::Registered);
                        }
                        Err(error) => {
                            self.failed("register", &error);
                            let attempt = retrying.as_ref().map_or(0, |r| r.attempt) + 1;
                            let delay = backoff.delay();
                            tracing::warn!(%service, %id, attempt, %error, retry_in = ?delay, "writing a lost registration failed");
                            self.set_state(RegistrationState::Lost { attempt, error });
                            retrying = Some(Retrying {
                                at: Instant::now() + delay,
                                attempt,
                            });
                        }
                    }
                }
            }
        }
    }
}

/// Resolves when the held registration is lost; never without one.
async fn lost(holding: &mut Option<BoxFuture<'static, Error>>) -> Error {
    match holding {
        Some(hold) => hold.await,
        None => std::future::pending().await,
    }
}

/// Resolves when the next write of a lost registration is due; never when none is.
async fn retry_at(retrying: &Option<Retrying>) {
    match retrying {
        Some(retry) => tokio::time::sleep_until(retry.at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use tokio::sync::Notify;

    use super::*;

    /// A registry that holds whatever is written, and whose `contains` waits for `gate`.
    #[derive(Default)]
    struct Gated {
        listed: AtomicBool,
        asked: Notify,
        gate: Notify,
    }

    #[async_trait]
    impl Store for Arc<Gated> {
        type Lease = ();

        async fn write(&self, _: &ServiceInstance, _: Option<&()>) -> Result<()> {
            self.listed.store(true, Ordering::SeqCst);
            Ok(())
        }

        async fn hold(&self, _: &ServiceInstance, _: &()) -> Error {
            std::future::pending().await
        }

        async fn remove(&self, _: &ServiceInstance, _: Option<&()>) -> Result<()> {
            self.listed.store(false, Ordering::SeqCst);
            Ok(())
        }

        async fn contains(&self, _: &str, _: &str) -> Result<bool> {
            self.asked.notify_one();
            self.gate.notified().await;
            Ok(self.listed.load(Ordering::SeqCst))
        }
    }

    fn instance() -> ServiceInstance {
        ServiceInstance::builder("x", "svc")
            .endpoint("http://127.0.0.1:8000")
            .build()
            .expect("valid")
    }

    /// A deregister of an id the handle does not hold asks the registry; a register of the
    /// same id by the same handle meanwhile is what the registry then lists: the deregister
    /// came first and succeeds (it once failed with NotOwned).
    #[tokio::test]
    async fn a_deregister_racing_a_register_of_the_same_handle_is_not_refused() {
        let store = Arc::new(Gated::default());
        let registrations = Arc::new(Registrations::new(store.clone()));
        let deregister = tokio::spawn({
            let registrations = registrations.clone();
            async move { registrations.deregister(&instance()).await }
        });
        store.asked.notified().await;
        registrations.register(&instance()).await.expect("register");
        store.gate.notify_one();
        deregister.await.expect("joined").expect("not refused");
        assert!(registrations.status("svc", "x").is_some(), "still held");
    }

    /// The rule itself stands: an id listed by another owner is refused.
    #[tokio::test]
    async fn a_deregister_of_another_owners_id_is_refused() {
        let store = Arc::new(Gated::default());
        store.listed.store(true, Ordering::SeqCst);
        store.gate.notify_one();
        let registrations = Registrations::new(store);
        let refused = registrations.deregister(&instance()).await;
        assert!(
            matches!(refused, Err(Error::NotOwned { .. })),
            "{refused:?}"
        );
    }
}

//! The writing side of the composite: the core's supervisor ([`Registrations`]) over
//! [`Fanout`], a [`Store`] that writes to every member through one [`Link`] per (member,
//! registration).
//!
//! The core keeps, for the composite as for any backend, the order of the calls of one id,
//! cancel safety, the rule for instances of other owners and `close()`. Each member's handle
//! keeps what it holds alive and writes it again when it is lost (its own supervisor). What
//! is left to this module: answering once the reachable members have answered, and a write
//! that a member has not taken yet (it was down when the registration was made, so its
//! handle holds nothing to write again), or a removal it missed: its link retries those
//! with back-off until the member takes them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::select_all;
use futures::FutureExt;
use registry_core::registration::Store;
use registry_core::{
    Backoff, Error, RegistrationState, RegistrationStatus, Result, ServiceInstance,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::members::{first_error, gather, Member};

/// The first pause before a link tries a member again, doubling up to [`LINK_RETRY_CAP`].
const LINK_FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest pause between two attempts of a link.
const LINK_RETRY_CAP: Duration = Duration::from_secs(2);

/// How often, at most, the composite's supervisor looks again whether every member holds a
/// registration that one of them lacked (a look at the links' states, no request).
const STATE_RETRY_CAP: Duration = Duration::from_secs(2);

/// Where one registration of the composite stands on one member.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum MemberState {
    /// The member is being written to.
    Pending,
    /// The member's handle holds the registration and keeps it alive (its own state, which
    /// is [`RegistrationState::Lost`] while its backend writes it again).
    Held(RegistrationState),
    /// The member has not taken the registration: it could not be reached when it was
    /// made, or was not connected yet. Written again with back-off until it is (at once
    /// when a member not connected yet connects).
    Retrying {
        /// Failed attempts so far.
        attempt: u32,
        /// The last failure.
        error: Error,
    },
    /// The member refused the registration for good (say a metadata key its server does
    /// not allow); nothing is retried.
    Refused(Error),
    /// The deregister has not reached the member yet; tried again with back-off.
    Removing {
        /// Failed attempts so far.
        attempt: u32,
        /// The last failure.
        error: Error,
    },
    /// Removed from the member.
    Removed,
}

impl MemberState {
    /// Whether the member holds the registration and keeps it alive right now.
    pub fn is_registered(&self) -> bool {
        matches!(self, MemberState::Held(state) if state.is_registered())
    }

    /// Why the member does not hold the registration right now, if it does not.
    fn problem(&self, member: &Member) -> Option<Error> {
        let error = match self {
            MemberState::Held(RegistrationState::Registered) => return None,
            MemberState::Held(RegistrationState::Lost { error, .. })
            | MemberState::Retrying { error, .. }
            | MemberState::Removing { error, .. }
            | MemberState::Refused(error) => error.clone(),
            MemberState::Pending | MemberState::Held(RegistrationState::Pending) => {
                Error::Unavailable {
                    message: "the write has not been answered yet".into(),
                    source: None,
                }
            }
            _ => Error::Unavailable {
                message: "the member no longer holds the registration".into(),
                source: None,
            },
        };
        Some(Error::Unavailable {
            message: format!("member {}: {error}", member.url),
            source: Some(Arc::new(error)),
        })
    }
}

type Key = (String, String);

enum Command {
    Put(ServiceInstance, oneshot::Sender<Result<()>>),
    Remove(ServiceInstance, oneshot::Sender<Result<()>>),
}

/// One (member, registration) link.
struct Link {
    serial: u64,
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<MemberState>,
    /// The value sent last (`None` after a removal).
    sent: Option<ServiceInstance>,
    task: AbortHandle,
}

#[derive(Default)]
struct LinkMap {
    /// By member index, then registration.
    links: HashMap<(usize, Key), Link>,
    serial: u64,
    aborted: bool,
}

/// Every link of a composite.
#[derive(Default)]
pub(crate) struct Links {
    map: Mutex<LinkMap>,
}

impl Links {
    fn lock(&self) -> MutexGuard<'_, LinkMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops every link at once (what a dropped or closed composite does).
    pub(crate) fn abort(&self) {
        let mut map = self.lock();
        map.aborted = true;
        for (_, link) in map.links.drain() {
            link.task.abort();
        }
    }

    /// The state of every registration on member `index`, sorted.
    pub(crate) fn states(&self, index: usize) -> Vec<(String, String, MemberState)> {
        let map = self.lock();
        let mut states: Vec<_> = map
            .links
            .iter()
            .filter(|((member, _), _)| *member == index)
            .map(|((_, (name, id)), link)| (name.clone(), id.clone(), link.state.borrow().clone()))
            .collect();
        states.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        states
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        self.abort();
    }
}

/// The composite's [`Store`]: a write goes to every member, through their links.
pub(crate) struct Fanout {
    pub(crate) members: Arc<[Arc<Member>]>,
    pub(crate) links: Arc<Links>,
    pub(crate) member_timeout: Duration,
}

/// What a send to the links of one registration gives: by member, the answer to wait for
/// (`None` where nothing was sent).
type Answers = Vec<Option<oneshot::Receiver<Result<()>>>>;

impl Fanout {
    /// Sends `instance` to the link of each member that was not sent exactly it last,
    /// starting links where there are none.
    fn send_put(&self, instance: &ServiceInstance) -> Result<Answers> {
        let key = (instance.name.clone(), instance.id.clone());
        let mut map = self.links.lock();
        if map.aborted {
            return Err(Error::Closed);
        }
        let mut answers = Vec::with_capacity(self.members.len());
        for member in self.members.iter() {
            let at = (member.index, key.clone());
            if !map.links.contains_key(&at) {
                let link = spawn(
                    &mut map,
                    member.clone(),
                    Arc::downgrade(&self.links),
                    at.clone(),
                );
                map.links.insert(at.clone(), link);
            }
            let Some(link) = map.links.get_mut(&at) else {
                answers.push(None);
                continue;
            };
            // A link has what it was sent last: its member's handle keeps it (and writes it
            // again), or the link retries it. Sending it again would change nothing.
            if link.sent.as_ref() == Some(instance) {
                answers.push(None);
                continue;
            }
            let (ack, answer) = oneshot::channel();
            link.commands
                .send(Command::Put(instance.clone(), ack))
                .map_err(|_| Error::Closed)?;
            link.sent = Some(instance.clone());
            answers.push(Some(answer));
        }
        Ok(answers)
    }

    /// Sends a removal of `instance` to every link of its registration there is.
    fn send_remove(&self, instance: &ServiceInstance) -> Answers {
        let key = (instance.name.clone(), instance.id.clone());
        let mut map = self.links.lock();
        let mut answers = Vec::with_capacity(self.members.len());
        for member in self.members.iter() {
            let answer = map
                .links
                .get_mut(&(member.index, key.clone()))
                .and_then(|link| {
                    let (ack, answer) = oneshot::channel();
                    link.commands
                        .send(Command::Remove(instance.clone(), ack))
                        .ok()?;
                    link.sent = None;
                    Some(answer)
                });
            answers.push(answer);
        }
        answers
    }

    /// The state of the registration of `key` on every member, by member.
    fn states(&self, key: &Key) -> Vec<Option<watch::Receiver<MemberState>>> {
        let map = self.links.lock();
        self.members
            .iter()
            .map(|m| {
                map.links
                    .get(&(m.index, key.clone()))
                    .map(|l| l.state.clone())
            })
            .collect()
    }

    /// Why not every member holds `key`, if one does not.
    fn lacking(&self, key: &Key) -> Option<Error> {
        self.members
            .iter()
            .find_map(|member| self.holds(key, member).err())
    }

    /// Waits for the answers sent for, as [`gather`] does (every member, or the member
    /// timeout after the first success). A member sent nothing answers `unsent`.
    async fn answers(
        &self,
        answers: Answers,
        unsent: impl Fn(&Member) -> Result<()>,
    ) -> Vec<Option<Result<()>>> {
        let answers: Vec<Mutex<Option<oneshot::Receiver<Result<()>>>>> =
            answers.into_iter().map(Mutex::new).collect();
        gather(&self.members, self.member_timeout, |member| {
            let answer = answers[member.index]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            let unsent = match answer {
                None => Some(unsent(&member)),
                Some(_) => None,
            };
            async move {
                match (answer, unsent) {
                    (Some(answer), _) => answer.await.unwrap_or(Err(Error::Closed)),
                    (None, Some(result)) => result,
                    (None, None) => Ok(()),
                }
            }
        })
        .await
    }

    /// A member not sent a value because its link has it: whether it holds it now.
    fn holds(&self, key: &Key, member: &Member) -> Result<()> {
        let state = self
            .links
            .lock()
            .links
            .get(&(member.index, key.clone()))
            .map(|l| l.state.clone());
        match state {
            Some(state) => match state.borrow().problem(member) {
                None => Ok(()),
                Some(error) => Err(error),
            },
            None => Err(Error::Unavailable {
                message: format!("member {}: not written", member.url),
                source: None,
            }),
        }
    }
}

#[async_trait]
impl Store for Fanout {
    /// The value written.
    type Lease = ServiceInstance;

    /// Writes `instance` to every member that does not hold it yet. Succeeds once one member
    /// has it and every other has answered or had the member timeout to; the others are the
    /// links' to retry, and the registration counts as lost until they hold it. Fails when no
    /// member took it; a refusal by any member puts the previous value back everywhere (the
    /// supervisor removes a refused first write).
    async fn write(
        &self,
        instance: &ServiceInstance,
        held: Option<&ServiceInstance>,
    ) -> Result<ServiceInstance> {
        let key = (instance.name.clone(), instance.id.clone());
        let sent = self.send_put(instance)?;
        if sent.iter().all(Option::is_none) {
            // Every member has this value already: the supervisor asks again after a loss,
            // and it is back once each member holds it again.
            return match self.lacking(&key) {
                None => Ok(instance.clone()),
                Some(error) => Err(error),
            };
        }
        let answers = self.answers(sent, |member| self.holds(&key, member)).await;
        let refused = answers
            .iter()
            .zip(self.members.iter())
            .find_map(|(answer, member)| match answer {
                Some(Err(e)) if !e.is_temporary() => Some(member.named(e.clone())),
                _ => None,
            });
        if let Some(refusal) = refused {
            if let Some(previous) = held {
                let back = self.send_put(previous)?;
                self.answers(back, |_| Ok(())).await;
            }
            return Err(refusal);
        }
        if answers.iter().any(|a| matches!(a, Some(Ok(())))) {
            Ok(instance.clone())
        } else {
            Err(first_error(
                &self.members,
                &answers,
                "register",
                self.member_timeout,
            ))
        }
    }

    /// Resolves as soon as a member does not hold the registration (not written yet, lost,
    /// refused), naming it.
    async fn hold(&self, instance: &ServiceInstance, _lease: &ServiceInstance) -> Error {
        let key = (instance.name.clone(), instance.id.clone());
        let mut states: Vec<(usize, watch::Receiver<MemberState>)> = Vec::new();
        for (index, state) in self.states(&key).into_iter().enumerate() {
            match state {
                Some(state) => states.push((index, state)),
                None => {
                    return Error::Unavailable {
                        message: format!("member {}: not written", self.members[index].url),
                        source: None,
                    }
                }
            }
        }
        loop {
            for (index, state) in &mut states {
                if let Some(error) = state.borrow_and_update().problem(&self.members[*index]) {
                    return error;
                }
            }
            let changes = states.iter_mut().map(|(_, s)| s.changed().boxed());
            let (changed, _, _) = select_all(changes).await;
            if changed.is_err() {
                return Error::Closed;
            }
        }
    }

    /// Removes `instance` from every member. Succeeds once one member removed it and the
    /// others answered or had the member timeout to (a member that missed it is the link's
    /// to retry). When no member could remove it, fails, and the registration stays as it
    /// was (still kept by every member).
    async fn remove(
        &self,
        instance: &ServiceInstance,
        lease: Option<&ServiceInstance>,
    ) -> Result<()> {
        let sent = self.send_remove(instance);
        if sent.iter().all(Option::is_none) {
            return Ok(());
        }
        // A member whose link was gone has nothing of it.
        let answers = self.answers(sent, |_| Ok(())).await;
        if answers.iter().any(|a| matches!(a, Some(Ok(())))) {
            return Ok(());
        }
        let error = first_error(&self.members, &answers, "deregister", self.member_timeout);
        if let (Some(written), true) = (lease, error.is_temporary()) {
            // Still held: the members keep it, and the caller may deregister again.
            let _ = self.send_put(written);
        }
        Err(error)
    }

    /// Whether any member lists the instance.
    async fn contains(&self, name: &str, id: &str) -> Result<bool> {
        let answers = gather(&self.members, self.member_timeout, |member| async move {
            member.registry()?.get_service(name).await
        })
        .await;
        if answers
            .iter()
            .any(|a| matches!(a, Some(Ok(list)) if list.iter().any(|i| i.id == id)))
        {
            return Ok(true);
        }
        if answers.iter().any(|a| matches!(a, Some(Ok(_)))) {
            return Ok(false);
        }
        Err(first_error(
            &self.members,
            &answers,
            "get_service",
            self.member_timeout,
        ))
    }

    fn retry_cap(&self) -> Duration {
        STATE_RETRY_CAP
    }

    fn backend(&self) -> &'static str {
        super::SCHEME
    }
}

fn spawn(map: &mut LinkMap, member: Arc<Member>, links: Weak<Links>, at: (usize, Key)) -> Link {
    map.serial += 1;
    let serial = map.serial;
    let (commands, rx) = mpsc::unbounded_channel();
    let (state_tx, state) = watch::channel(MemberState::Pending);
    let task = LinkTask {
        member,
        links,
        at,
        serial,
        commands: rx,
        queued: VecDeque::new(),
        state: state_tx,
    };
    let task = tokio::spawn(task.run()).abort_handle();
    Link {
        serial,
        commands,
        state,
        sent: None,
        task,
    }
}

enum Event {
    Command(Option<Command>),
    Member(Option<RegistrationState>),
    Retry,
}

/// What a link is to make the member hold.
enum Goal {
    Hold(ServiceInstance),
    Remove(ServiceInstance),
}

struct LinkTask {
    member: Arc<Member>,
    links: Weak<Links>,
    at: (usize, Key),
    serial: u64,
    commands: mpsc::UnboundedReceiver<Command>,
    queued: VecDeque<Command>,
    state: watch::Sender<MemberState>,
}

impl LinkTask {
    /// Whether the link may end (no command waiting); forgets it when so, under the lock
    /// commands are sent under, so that none is left unanswered.
    fn finish(&mut self) -> bool {
        let Some(links) = self.links.upgrade() else {
            return true;
        };
        let mut map = links.lock();
        if let Ok(command) = self.commands.try_recv() {
            self.queued.push_back(command);
            return false;
        }
        if map
            .links
            .get(&self.at)
            .is_some_and(|l| l.serial == self.serial)
        {
            map.links.remove(&self.at);
        }
        true
    }

    fn publish(&self, state: MemberState) {
        self.state.send_replace(state);
    }

    async fn run(mut self) {
        let (name, id) = self.at.1.clone();
        let mut backoff = Backoff::new(LINK_FIRST_RETRY, LINK_RETRY_CAP);
        let mut goal: Option<Goal> = None;
        let mut attempt: u32 = 0;
        let mut retry_at: Option<Instant> = None;
        // The member's own state of the registration, while its handle holds it.
        let mut held: Option<RegistrationStatus> = None;
        loop {
            let event = match self.queued.pop_front() {
                Some(command) => Event::Command(Some(command)),
                None => tokio::select! {
                    biased;
                    command = self.commands.recv() => Event::Command(command),
                    state = member_state(&mut held) => Event::Member(state),
                    () = retry(retry_at) => Event::Retry,
                    () = connected(&self.member, retry_at) => Event::Retry,
                },
            };
            let ack = match event {
                // The composite is gone.
                Event::Command(None) => return,
                Event::Member(Some(state)) => {
                    self.publish(MemberState::Held(state));
                    continue;
                }
                Event::Member(None) => {
                    // The member's handle ended the registration (closed).
                    held = None;
                    continue;
                }
                Event::Command(Some(Command::Put(instance, ack))) => {
                    goal = Some(Goal::Hold(instance));
                    attempt = 0;
                    backoff.reset();
                    Some(ack)
                }
                Event::Command(Some(Command::Remove(instance, ack))) => {
                    goal = Some(Goal::Remove(instance));
                    attempt = 0;
                    backoff.reset();
                    Some(ack)
                }
                Event::Retry => None,
            };
            retry_at = None;
            let result = match &goal {
                None => Ok(()),
                Some(Goal::Hold(instance)) => {
                    if attempt == 0 && held.is_none() {
                        self.publish(MemberState::Pending);
                    }
                    let written = match self.member.registry() {
                        Ok(registry) => registry.register(instance).await,
                        Err(error) => Err(error),
                    };
                    match written {
                        Ok(()) => {
                            held = self.member.registration(&name, &id);
                            let state = held
                                .as_ref()
                                .map_or(RegistrationState::Registered, RegistrationStatus::get);
                            self.publish(MemberState::Held(state));
                            if attempt > 0 {
                                tracing::info!(member = %self.member.url, service = %name, %id, "member took the registration");
                            }
                            Ok(())
                        }
                        Err(error) => {
                            self.member.note(&error);
                            held = self.member.registration(&name, &id);
                            if let Some(status) = &held {
                                // The member's handle holds it and writes it again itself.
                                self.publish(MemberState::Held(status.get()));
                            } else if error.is_temporary() {
                                attempt += 1;
                                let delay = backoff.delay();
                                tracing::warn!(member = %self.member.url, service = %name, %id, attempt, %error, retry_in = ?delay, "member did not take the registration; trying again");
                                self.publish(MemberState::Retrying {
                                    attempt,
                                    error: error.clone(),
                                });
                                retry_at = Some(Instant::now() + delay);
                            } else {
                                self.publish(MemberState::Refused(error.clone()));
                            }
                            Err(error)
                        }
                    }
                }
                Some(Goal::Remove(instance)) => {
                    held = None;
                    // A member never connected holds nothing of the composite's.
                    let removed = match self.member.handle() {
                        Some(registry) => registry.deregister(instance).await,
                        None => Ok(()),
                    };
                    match removed {
                        Ok(()) => {
                            self.publish(MemberState::Removed);
                            Ok(())
                        }
                        Err(error) if error.is_temporary() => {
                            self.member.note(&error);
                            attempt += 1;
                            let delay = backoff.delay();
                            tracing::warn!(member = %self.member.url, service = %name, %id, attempt, %error, retry_in = ?delay, "member did not take the deregister; trying again");
                            self.publish(MemberState::Removing {
                                attempt,
                                error: error.clone(),
                            });
                            retry_at = Some(Instant::now() + delay);
                            Err(error)
                        }
                        Err(error) => {
                            // Another owner's (or refused for good): nothing more to do.
                            self.member.note(&error);
                            self.publish(MemberState::Removed);
                            Err(error)
                        }
                    }
                }
            };
            let done = matches!(goal, Some(Goal::Remove(_))) && retry_at.is_none();
            let ended = done && self.finish();
            if let Some(ack) = ack {
                let _ = ack.send(result);
            }
            if ended {
                return;
            }
        }
    }
}

/// The next state of the member's own registration; never while it holds none.
async fn member_state(held: &mut Option<RegistrationStatus>) -> Option<RegistrationState> {
    match held {
        Some(status) => status.changed().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the member, not connected when a write to it failed, is connected: the
/// link tries again at once rather than at its next retry.
async fn connected(member: &Member, retry_at: Option<Instant>) {
    if retry_at.is_none() || member.is_connected() {
        return std::future::pending().await;
    }
    member.wait_connected().await;
}

async fn retry(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

//! The reading side of the composite: `get_service` and `list_services` ask every member at
//! once; a watch runs on the core's engine ([`Watches`](registry_core::Watches)) over
//! [`Merge`], a [`Source`] that follows a watcher of every member and publishes their
//! merged list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use registry_core::watch::{Source, Stop, Updates};
use registry_core::{Backoff, Error, Instances, Result, ServiceInstance, WatchEvent};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::members::{first_error, gather, Member};
use super::ReadMode;

/// The longest back-off between two attempts to follow a member that failed.
const MEMBER_RETRY_CAP: Duration = Duration::from_secs(5);

/// What one member shows of a service.
#[derive(Debug, Clone, Default)]
struct View {
    /// Its latest list (the last known one while it cannot be followed).
    list: Option<Instances>,
    /// Followed right now: its watcher delivered a list and is not degraded.
    live: bool,
    /// Why it cannot be followed, while it cannot.
    error: Option<Error>,
    /// Whether it answered at all in this round (a list or a failure).
    reported: bool,
}

/// The instances a composite shows, from what each member shows, in member order.
///
/// [`ReadMode::Merge`]: the union by instance id of every member's list (a member that
/// cannot be followed counts with its last known list); an id several members list is taken
/// from the first of them. [`ReadMode::First`]: the list of the first live member, else of
/// the first with a list. Sorted by id.
fn merge(mode: ReadMode, views: &[View]) -> Vec<ServiceInstance> {
    let chosen: Vec<&Instances> = match mode {
        ReadMode::First => views
            .iter()
            .find(|v| v.live && v.list.is_some())
            .or_else(|| views.iter().find(|v| v.list.is_some()))
            .and_then(|v| v.list.as_ref())
            .into_iter()
            .collect(),
        _ => views.iter().filter_map(|v| v.list.as_ref()).collect(),
    };
    let mut by_id: BTreeMap<&str, &ServiceInstance> = BTreeMap::new();
    for list in chosen {
        for instance in list.iter() {
            by_id.entry(instance.id.as_str()).or_insert(instance);
        }
    }
    by_id.into_values().cloned().collect()
}

/// The composite's `get_service`: every member asked at once, merged.
pub(crate) async fn get(
    members: &[Arc<Member>],
    mode: ReadMode,
    timeout: Duration,
    name: &str,
) -> Result<Vec<ServiceInstance>> {
    let answers = gather(members, timeout, |member| async move {
        member.registry()?.get_service(name).await
    })
    .await;
    let views: Vec<View> = answers
        .iter()
        .map(|answer| match answer {
            Some(Ok(list)) => View {
                list: Some(Instances::from(list.clone())),
                live: true,
                error: None,
                reported: true,
            },
            _ => View::default(),
        })
        .collect();
    if !views.iter().any(|v| v.live) {
        return Err(first_error(members, &answers, "get_service", timeout));
    }
    Ok(merge(mode, &views))
}

/// The composite's `list_services`: the union of every member's, sorted.
pub(crate) async fn services(members: &[Arc<Member>], timeout: Duration) -> Result<Vec<String>> {
    let answers = gather(members, timeout, |member| async move {
        member.registry()?.list_services().await
    })
    .await;
    if !answers.iter().any(|a| matches!(a, Some(Ok(_)))) {
        return Err(first_error(members, &answers, "list_services", timeout));
    }
    let mut names: Vec<String> = answers
        .into_iter()
        .filter_map(|a| a.and_then(Result::ok))
        .flatten()
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Where a composite watch stands: each member's last known list, by member. The engine
/// hands it back after a failure, so that a member that is still away keeps counting with
/// what it last showed.
#[derive(Debug, Clone)]
pub(crate) struct Seen(Arc<[Option<Instances>]>);

/// The composite's [`Source`]: a watcher on every member, merged.
pub(crate) struct Merge {
    pub(crate) members: Arc<[Arc<Member>]>,
    pub(crate) mode: ReadMode,
    pub(crate) member_timeout: Duration,
}

/// What a member's watcher told, or why there is none.
enum Told {
    Event(WatchEvent),
    Failed(Error),
}

#[async_trait]
impl Source for Merge {
    type Position = Seen;

    async fn list(&self, name: &str) -> Result<(Vec<ServiceInstance>, Seen)> {
        let answers = gather(&self.members, self.member_timeout, |member| async move {
            member.registry()?.get_service(name).await
        })
        .await;
        let lists: Vec<Option<Instances>> = answers
            .iter()
            .map(|a| match a {
                Some(Ok(list)) => Some(Instances::from(list.clone())),
                _ => None,
            })
            .collect();
        if lists.iter().all(Option::is_none) {
            return Err(first_error(
                &self.members,
                &answers,
                "get_service",
                self.member_timeout,
            ));
        }
        let views: Vec<View> = lists
            .iter()
            .map(|list| View {
                live: list.is_some(),
                list: list.clone(),
                ..View::default()
            })
            .collect();
        Ok((merge(self.mode, &views), Seen(lists.into())))
    }

    /// Follows every member's watcher and publishes the merged list after each change, once
    /// every member has answered or the member timeout passed after the first one did. A
    /// member that fails is followed again with back-off while the others go on; only when
    /// no member can be followed does this stop (the composite's watchers are then told the
    /// registry is unreachable, and keep the last list).
    async fn follow(&self, name: &str, from: Seen, updates: &Updates<Seen>) -> Stop {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut followers = JoinSet::new();
        for member in self.members.iter() {
            followers.spawn(follow_member(member.clone(), name.to_owned(), tx.clone()));
        }
        drop(tx);
        let mut views: Vec<View> = from
            .0
            .iter()
            .map(|list| View {
                list: list.clone(),
                ..View::default()
            })
            .collect();
        let mut settle_at: Option<Instant> = None;
        let mut settled = false;
        loop {
            tokio::select! {
                told = rx.recv() => {
                    let Some((index, told)) = told else {
                        return Stop::Failed(Error::Closed);
                    };
                    let Some(view) = views.get_mut(index) else { continue };
                    view.reported = true;
                    match told {
                        Told::Event(WatchEvent::Changed(list)) => {
                            view.list = Some(list);
                            view.live = true;
                            view.error = None;
                        }
                        Told::Event(WatchEvent::Degraded(error)) | Told::Failed(error) => {
                            view.live = false;
                            view.error = Some(self.members[index].named(error));
                        }
                        Told::Event(WatchEvent::Recovered) => {
                            view.live = view.list.is_some();
                            view.error = None;
                        }
                        Told::Event(_) => {}
                    }
                }
                () = until(settle_at), if !settled => settled = true,
            }
            if !settled {
                if views.iter().all(|v| v.reported) {
                    settled = true;
                } else if settle_at.is_none() && views.iter().any(|v| v.live) {
                    settle_at = Some(Instant::now() + self.member_timeout);
                }
            }
            if !settled {
                continue;
            }
            if views.iter().any(|v| v.live) {
                let seen = Seen(views.iter().map(|v| v.list.clone()).collect());
                updates.list(merge(self.mode, &views), seen);
            } else if let Some(error) = views
                .iter()
                .all(|v| v.error.is_some())
                .then(|| views.iter().find_map(|v| v.error.clone()))
                .flatten()
            {
                return Stop::Failed(error);
            }
        }
    }

    /// Goes on from each member's last known list.
    async fn resume(&self, _name: &str, _from: &Seen) -> Result<bool> {
        Ok(true)
    }

    fn retry_cap(&self) -> Duration {
        MEMBER_RETRY_CAP
    }

    fn backend(&self) -> &'static str {
        super::SCHEME
    }
}

/// Follows `name` on one member for as long as the receiver lives, watching it again with
/// back-off whenever the watch cannot be made or ends; a member not connected yet is
/// followed from the moment it is.
async fn follow_member(
    member: Arc<Member>,
    name: String,
    tx: mpsc::UnboundedSender<(usize, Told)>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), MEMBER_RETRY_CAP);
    loop {
        let registry = match member.registry() {
            Ok(registry) => registry,
            Err(error) => {
                // Not connected yet: told at once (the others need not wait for it), then
                // followed as soon as it is.
                if tx.send((member.index, Told::Failed(error))).is_err() {
                    return;
                }
                tokio::select! {
                    registry = member.wait_connected() => registry,
                    () = tx.closed() => return,
                }
            }
        };
        let error = match registry.watch(&name).await {
            Ok(mut watcher) => loop {
                match watcher.next_event().await {
                    Ok(event) => {
                        match &event {
                            WatchEvent::Changed(_) => backoff.reset(),
                            WatchEvent::Degraded(error) => member.note(error),
                            _ => {}
                        }
                        if tx.send((member.index, Told::Event(event))).is_err() {
                            return;
                        }
                    }
                    Err(error) => break error,
                }
            },
            Err(error) => error,
        };
        member.note(&error);
        if tx.send((member.index, Told::Failed(error))).is_err() {
            return;
        }
        tokio::time::sleep(backoff.delay()).await;
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, version: &str) -> ServiceInstance {
        ServiceInstance::builder(id, "svc")
            .version(version)
            .endpoint("http://127.0.0.1:8000")
            .build()
            .unwrap()
    }

    fn view(list: &[ServiceInstance], live: bool) -> View {
        View {
            list: Some(Instances::from(list.to_vec())),
            live,
            error: None,
            reported: true,
        }
    }

    #[test]
    fn merge_is_a_union_by_id_where_the_first_member_wins() {
        let views = [
            view(&[instance("b", "first"), instance("c", "first")], true),
            view(&[instance("a", "second"), instance("b", "second")], false),
            View::default(),
        ];
        let merged = merge(ReadMode::Merge, &views);
        let shown: Vec<(&str, &str)> = merged
            .iter()
            .map(|i| (i.id.as_str(), i.version.as_str()))
            .collect();
        assert_eq!(shown, [("a", "second"), ("b", "first"), ("c", "first")]);
    }

    #[test]
    fn first_takes_the_first_live_member() {
        let one = [instance("a", "1")];
        let two = [instance("b", "2")];
        let both_live = [view(&one, true), view(&two, true)];
        assert_eq!(merge(ReadMode::First, &both_live), one);
        let first_away = [view(&one, false), view(&two, true)];
        assert_eq!(merge(ReadMode::First, &first_away), two);
        let none_live = [View::default(), view(&two, false)];
        assert_eq!(merge(ReadMode::First, &none_live), two);
    }
}

//! The check that a handle's registrations are still listed, one per Nacos service and shared
//! by the holds of that service's registrations: one list call per service every few seconds,
//! not one per registration.
//!
//! nacos-sdk reconnects and registers again on its own, so a hold cannot hear of a loss; it
//! looks instead. With hundreds of registrations of one service in one process, a list per
//! registration every 3 s was a steady stream of calls on the connection the process' own
//! calls use. A [`Check`] lists its service every [`CHECK_EVERY`] while some hold waits on it
//! and publishes what it read; a hold only reads listings whose call began at least one period
//! after the hold did (so that one read before its write, or served from a server's cache not
//! yet refreshed, cannot make it look lost).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use nacos_sdk::api::naming::NamingService;
use registry_core::Error;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::source;

/// How often a service's registrations are checked.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(3);

/// The addresses a service lists.
type Listed = HashSet<(String, i32)>;

/// One reading of a service: when its call began, and what it answered.
#[derive(Clone)]
struct Reading {
    began: Instant,
    listed: std::result::Result<Arc<Listed>, Error>,
}

/// The running check of one service; its task stops when the last hold lets it go.
struct Check {
    readings: watch::Receiver<Option<Reading>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Check {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The checks of one handle, by Nacos service.
#[derive(Default, Clone)]
pub(crate) struct Checks(Arc<Mutex<HashMap<String, Weak<Check>>>>);

impl Checks {
    fn checks(&self) -> MutexGuard<'_, HashMap<String, Weak<Check>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The check of `service`, started when no hold of it runs.
    fn of(&self, naming: &NamingService, group: &str, service: &str) -> Arc<Check> {
        let mut checks = self.checks();
        if let Some(check) = checks.get(service).and_then(Weak::upgrade) {
            return check;
        }
        checks.retain(|_, check| check.strong_count() > 0);
        let (tx, readings) = watch::channel(None);
        let task = tokio::spawn(run(
            naming.clone(),
            group.to_owned(),
            service.to_owned(),
            tx,
        ));
        let check = Arc::new(Check { readings, task });
        checks.insert(service.to_owned(), Arc::downgrade(&check));
        check
    }

    /// Resolves when a listing of one of `parts`' services, begun at least [`CHECK_EVERY`]
    /// after this was called, lacks its part (the error says which), or when such a listing
    /// failed (its error), or when the check stopped.
    pub(crate) async fn until_lost(
        &self,
        naming: &NamingService,
        group: &str,
        parts: &[(String, String, i32)],
    ) -> Error {
        // A listing begun right after the write may not hold it yet (the real Nacos answers
        // queries from a cache its delayed push task refreshes): readings begun at least one
        // period after the hold, as a hold of its own would have listed.
        let since = Instant::now() + CHECK_EVERY;
        let mut services: Vec<(String, Arc<Check>, watch::Receiver<Option<Reading>>)> = Vec::new();
        for (service, _, _) in parts {
            if services.iter().any(|(s, _, _)| s == service) {
                continue;
            }
            let check = self.of(naming, group, service);
            let readings = check.readings.clone();
            services.push((service.clone(), check, readings));
        }
        loop {
            let next = services.iter_mut().map(|(service, _, readings)| {
                Box::pin(async move {
                    // The sender lives as long as the check this holds: `changed` cannot fail
                    // while it runs, and a failure would only mean "read it again".
                    if readings.changed().await.is_err() {
                        return (service.clone(), Err(()));
                    }
                    let reading = readings.borrow_and_update().clone();
                    (service.clone(), Ok(reading))
                })
            });
            let ((service, reading), _, _) = futures::future::select_all(next).await;
            let Ok(reading) = reading else {
                return Error::Unavailable {
                    message: format!("the check of Nacos service {service} stopped"),
                    source: None,
                };
            };
            let Some(reading) = reading.filter(|reading| reading.began >= since) else {
                continue;
            };
            let listed = match reading.listed {
                Ok(listed) => listed,
                Err(e) => return e,
            };
            if let Some((_, ip, port)) = parts
                .iter()
                .find(|(s, ip, port)| *s == service && !listed.contains(&(ip.clone(), *port)))
            {
                return Error::Backend {
                    backend: crate::SCHEME,
                    message: format!("{service} no longer lists {ip}:{port}"),
                    temporary: true,
                    source: None,
                };
            }
        }
    }
}

/// Lists `service` every [`CHECK_EVERY`] and publishes each reading.
async fn run(
    naming: NamingService,
    group: String,
    service: String,
    readings: watch::Sender<Option<Reading>>,
) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let began = Instant::now();
        let listed = source::instances_of(&naming, &group, &service)
            .await
            .map(|listed| Arc::new(listed.into_iter().map(|i| (i.ip, i.port)).collect()));
        readings.send_replace(Some(Reading { began, listed }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    /// The holds of one service share one check, which stops with the last of them; a part
    /// the service does not list is reported lost by the first listing read after the hold
    /// began. (That a listed part is not: the conformance suite's registrations stay
    /// registered, and its deleted-from-outside case is seen through this.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_check_per_service_shared_and_stopped_with_its_holds() {
        let server = test_support::NacosServer::start().await;
        let address = server.http().trim_start_matches("http://").to_owned();
        let config = Config::new([address]);
        let (naming, _, _probe) = crate::client::connect(&config).await.expect("connect");
        let group = config.group.clone();
        let checks = Checks::default();

        let first = checks.of(&naming, &group, "checked");
        let second = checks.of(&naming, &group, "checked");
        assert!(Arc::ptr_eq(&first, &second), "one check per service");
        let other = checks.of(&naming, &group, "other");
        assert!(!Arc::ptr_eq(&first, &other));
        let task = first.task.abort_handle();
        drop((first, second, other));
        test_support::eventually(Duration::from_secs(5), "the check's task stopped", || {
            let finished = task.is_finished();
            async move { finished }
        })
        .await;
        assert!(checks
            .checks()
            .get("checked")
            .and_then(Weak::upgrade)
            .is_none());

        // Nothing is registered: a part of "checked" is lost at the first reading.
        let parts = [("checked".to_owned(), "10.0.0.1".to_owned(), 9000)];
        let lost =
            tokio::time::timeout(CHECK_EVERY * 3, checks.until_lost(&naming, &group, &parts))
                .await
                .expect("reported within the check's period");
        assert!(
            lost.to_string().contains("no longer lists 10.0.0.1:9000"),
            "{lost}"
        );
    }
}

//! Metrics, through the [`metrics`] facade: the same names and labels on every backend, so
//! that any exporter (Prometheus through `metrics-exporter-prometheus`, StatsD, OpenTelemetry)
//! shows them once the application installs its recorder. Without a recorder they cost next
//! to nothing. The core records them (its registration supervisor and watch engine), never a
//! backend; `backend` is the backend's scheme ([`Store::backend`](crate::registration::Store::backend),
//! [`Source::backend`](crate::watch::Source::backend)).
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | [`REGISTRATIONS`] | gauge | `backend`, `state` | registrations of this process by state: `pending` (first write in flight), `registered`, `lost` (being written again) |
//! | [`REREGISTRATIONS`] | counter | `backend` | registrations written again after they were lost (or after an update failed) |
//! | [`ERRORS`] | counter | `backend`, `operation`, `kind` | failed calls to the registry: `operation` is `register`, `keepalive`, `deregister` or `watch`; `kind` is [`Error::kind`](crate::Error::kind) |
//! | [`WATCH_STALENESS`] | gauge | `backend`, `service` | seconds since a watch last heard from its registry: 0 while it follows it, growing (at each retry) while it cannot |
//! | [`WATCHED_INSTANCES`] | gauge | `backend`, `service` | instances in the last list a watch delivered |
//!
//! Call [`describe`] once after installing the recorder to give each its description.
//!
//! The `metrics` crate is the facade the Rust ecosystem shares (as `log` and `tracing` are for
//! logs): a library records, the application picks the exporter.

use metrics::{counter, describe_counter, describe_gauge, gauge, Gauge, Unit};

use crate::{Error, RegistrationState};

/// Gauge: registrations by `backend` and `state`.
pub const REGISTRATIONS: &str = "registry_registrations";
/// Counter: re-registrations by `backend`.
pub const REREGISTRATIONS: &str = "registry_reregistrations_total";
/// Counter: failed registry calls by `backend`, `operation` and `kind`.
pub const ERRORS: &str = "registry_errors_total";
/// Gauge: seconds since a watch last heard from its registry, by `backend` and `service`.
pub const WATCH_STALENESS: &str = "registry_watch_staleness_seconds";
/// Gauge: instances a watch lists, by `backend` and `service`.
pub const WATCHED_INSTANCES: &str = "registry_watched_instances";

/// Describes every metric to the recorder installed now (their help text and units).
pub fn describe() {
    describe_gauge!(
        REGISTRATIONS,
        "Registrations of this process by state (pending, registered, lost)."
    );
    describe_counter!(
        REREGISTRATIONS,
        "Registrations written again after they were lost."
    );
    describe_counter!(
        ERRORS,
        "Failed calls to the registry, by operation and kind."
    );
    describe_gauge!(
        WATCH_STALENESS,
        Unit::Seconds,
        "Seconds since a watch last heard from its registry (0 while it follows it)."
    );
    describe_gauge!(
        WATCHED_INSTANCES,
        "Instances in the last list a watch delivered."
    );
}

/// Counts a failed call.
pub(crate) fn error(backend: &'static str, operation: &'static str, error: &Error) {
    counter!(ERRORS, "backend" => backend, "operation" => operation, "kind" => error.kind())
        .increment(1);
}

/// Counts a registration written again.
pub(crate) fn reregistered(backend: &'static str) {
    counter!(REREGISTRATIONS, "backend" => backend).increment(1);
}

/// The state one registration adds to [`REGISTRATIONS`]: moved as its state moves, taken
/// back when dropped (with the registration's task).
pub(crate) struct StateGauge {
    backend: &'static str,
    counted: Option<Gauge>,
}

impl StateGauge {
    pub(crate) fn new(backend: &'static str) -> Self {
        StateGauge {
            backend,
            counted: None,
        }
    }

    /// Counts the registration under `state` (under none once deregistered).
    pub(crate) fn set(&mut self, state: &RegistrationState) {
        if let Some(old) = self.counted.take() {
            old.decrement(1.0);
        }
        let label = match state {
            RegistrationState::Pending => "pending",
            RegistrationState::Registered => "registered",
            RegistrationState::Lost { .. } => "lost",
            RegistrationState::Deregistered => return,
        };
        let new = gauge!(REGISTRATIONS, "backend" => self.backend, "state" => label);
        new.increment(1.0);
        self.counted = Some(new);
    }
}

impl Drop for StateGauge {
    fn drop(&mut self) {
        if let Some(old) = self.counted.take() {
            old.decrement(1.0);
        }
    }
}

/// One watched service's gauges.
#[derive(Clone)]
pub(crate) struct WatchGauges {
    pub(crate) backend: &'static str,
    pub(crate) staleness: Gauge,
    pub(crate) instances: Gauge,
}

impl WatchGauges {
    pub(crate) fn new(backend: &'static str, service: &str) -> Self {
        let service = service.to_owned();
        WatchGauges {
            backend,
            staleness: gauge!(WATCH_STALENESS, "backend" => backend, "service" => service.clone()),
            instances: gauge!(WATCHED_INSTANCES, "backend" => backend, "service" => service),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::REGISTRATIONS;
    use crate::{MemoryRegistry, Registrar, ServiceInstance};

    /// The value of the metric `name` with these labels (all of them), from the Prometheus page
    /// `recorder` renders now.
    pub(crate) fn metric(
        recorder: &metrics_exporter_prometheus::PrometheusHandle,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<f64> {
        let page = recorder.render();
        page.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let inside = series
                    .strip_prefix(name)?
                    .strip_prefix('{')?
                    .strip_suffix('}')?;
                let pairs: Vec<&str> = inside.split(',').collect();
                (pairs.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| pairs.contains(&format!("{k}=\"{v}\"").as_str())))
                .then(|| value.parse().ok())?
            })
            .next()
    }

    // A registration counts under its state while its task lives, and under none once
    // deregistered.
    #[test]
    fn registrations_count_by_state() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let registered = [("backend", "memory"), ("state", "registered")];
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let registry = MemoryRegistry::new();
                let instance = ServiceInstance::builder("1", "svc")
                    .endpoint("http://127.0.0.1:8000")
                    .build()
                    .expect("an instance");
                registry.register(&instance).await.expect("register");
                assert_eq!(metric(&metrics, REGISTRATIONS, &registered), Some(1.0));
                registry.deregister(&instance).await.expect("deregister");
                assert_eq!(metric(&metrics, REGISTRATIONS, &registered), Some(0.0));
            });
        });
    }
}

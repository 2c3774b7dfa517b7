//! The warnings the process logged, kept so that a case can check what a backend said about
//! the values it skipped: each once, however often the service changes.

use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// One warning: its message and its other fields, as `name=value` pairs in order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Warning {
    /// The event's target (the module that logged it).
    pub target: String,
    /// The event's message.
    pub message: String,
    /// The other fields.
    pub fields: String,
}

fn kept() -> &'static Mutex<Vec<Warning>> {
    static KEPT: OnceLock<Mutex<Vec<Warning>>> = OnceLock::new();
    KEPT.get_or_init(Mutex::default)
}

/// The warnings logged so far whose fields mention `text` (a case's unique service name).
pub fn mentioning(text: &str) -> Vec<Warning> {
    kept()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|w| w.fields.contains(text) || w.message.contains(text))
        .cloned()
        .collect()
}

/// A layer keeping every WARN and ERROR event.
pub struct Recorder;

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, "{}={value:?} ", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, "{}={value} ", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() > Level::WARN {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        kept()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Warning {
                target: event.metadata().target().to_owned(),
                message: fields.message,
                fields: fields.rest,
            });
    }
}

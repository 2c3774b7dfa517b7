//! Where a registration stands, and a handle to follow it.

use tokio::sync::watch;

use crate::Error;

/// Where one registration of a registry handle stands. The same states on every backend.
///
/// ```text
/// Pending ──write ok──▶ Registered ──lost──▶ Lost { attempt, error } ──write ok──▶ Registered
///    │                      │                        │
///    └──────────────────────┴── deregister/close ────┴──▶ Deregistered
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RegistrationState {
    /// The first write is in flight.
    Pending,
    /// Written, and kept alive (lease, session, TTL check or connection).
    Registered,
    /// The registration was lost (lease or session gone, entry deleted from outside, server
    /// wiped or unreachable) or an update could not be written: the latest value is being
    /// written again, with back-off that never gives up.
    Lost {
        /// How many writes failed since it was lost (0 right after the loss).
        attempt: u32,
        /// Why it was lost, or why the last write failed.
        error: Error,
    },
    /// Deregistered, or its handle closed. Final.
    Deregistered,
}

impl RegistrationState {
    /// Whether the registration is written and kept alive right now.
    pub fn is_registered(&self) -> bool {
        matches!(self, RegistrationState::Registered)
    }

    /// Whether the registration was lost and is being written again.
    pub fn is_lost(&self) -> bool {
        matches!(self, RegistrationState::Lost { .. })
    }
}

/// Follows one registration: read its state, or wait for one.
///
/// Got from [`Registry::registration`](crate::Registry::registration); cloning follows the
/// same registration.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> registry_core::Result<()> {
/// use registry_core::{MemoryRegistry, Registrar, Registry, RegistrationState, ServiceInstance};
/// let registry = MemoryRegistry::new();
/// let instance = ServiceInstance::builder("1", "helloworld")
///     .endpoint("http://127.0.0.1:8000")
///     .build()?;
/// registry.register(&instance).await?;
/// let mut status = registry.registration("helloworld", "1").expect("held by this handle");
/// assert!(status.get().is_registered());
/// registry.deregister(&instance).await?;
/// let last = status.wait_for(|s| matches!(s, RegistrationState::Deregistered)).await;
/// assert!(matches!(last, Some(RegistrationState::Deregistered)));
/// assert!(registry.registration("helloworld", "1").is_none());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RegistrationStatus {
    rx: watch::Receiver<RegistrationState>,
}

impl RegistrationStatus {
    pub(crate) fn new(rx: watch::Receiver<RegistrationState>) -> Self {
        RegistrationStatus { rx }
    }

    /// The state now.
    pub fn get(&self) -> RegistrationState {
        self.rx.borrow().clone()
    }

    /// Waits until the state satisfies `f` (checked on the current state first) and returns
    /// it; `None` when the registration ended (its handle dropped) without satisfying it.
    pub async fn wait_for(
        &mut self,
        mut f: impl FnMut(&RegistrationState) -> bool,
    ) -> Option<RegistrationState> {
        self.rx.wait_for(|s| f(s)).await.ok().map(|s| s.clone())
    }

    /// Waits for the next change of state and returns it; `None` once the registration
    /// ended (its last state stays readable through [`get`](Self::get)).
    pub async fn changed(&mut self) -> Option<RegistrationState> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }
}

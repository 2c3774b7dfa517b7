//! Registrations kept by the core: the supervisor ([`Registrations`]) and what a backend
//! implements for it ([`Store`]).
//!
//! A backend writes, keeps alive and removes one instance ([`Store`]); the supervisor owns
//! the policy — call order per id, writing a lost registration again with back-off, state,
//! `close()` — once for every backend. See the crate README's design note.

mod state;
mod store;
mod supervisor;

pub use state::{RegistrationState, RegistrationStatus};
pub use store::Store;
pub use supervisor::Registrations;

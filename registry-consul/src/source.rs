//! Consul's reading primitives for the core's watch engine: the passing list of a service
//! with its `X-Consul-Index`, and blocking queries from that index.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use registry_core::watch::{Pace, Source, Stop, Updates};
use registry_core::{Result, ServiceInstance};

use crate::client::Client;
use crate::format::instances;

/// The agent's health endpoint, read by blocking queries.
pub(crate) struct ConsulSource {
    pub(crate) client: Arc<Client>,
    /// How long one blocking query waits for a change (a hung agent is noticed after it).
    pub(crate) wait: Duration,
}

#[async_trait]
impl Source for ConsulSource {
    fn backend(&self) -> &'static str {
        crate::SCHEME
    }

    /// The `X-Consul-Index` of the read. After a failure the engine lists again (the
    /// default `resume`): an agent that restarted may count from a lower index.
    type Position = u64;

    async fn list(&self, name: &str) -> Result<(Vec<ServiceInstance>, u64)> {
        let (entries, index) = self.client.health(name, None).await?;
        let list = instances(entries);
        // Consul: an index must be above zero.
        Ok((list, index.max(1)))
    }

    async fn follow(&self, name: &str, from: u64, updates: &Updates<u64>) -> Stop {
        let mut index = from;
        let mut first = true;
        let mut pace = Pace::new();
        loop {
            let started = tokio::time::Instant::now();
            // Every query blocks: `index` (above zero) and `wait`.
            let (entries, new_index) =
                match self.client.health(name, Some((index, self.wait))).await {
                    Ok(answer) => answer,
                    Err(e) => return Stop::Failed(e),
                };
            if first {
                updates.following();
                first = false;
            }
            // Consul: an index that goes backwards (the agent restarted) resets the watch.
            if new_index < index {
                return Stop::Resync;
            }
            let moved = new_index != index;
            index = new_index.max(1);
            if moved {
                updates.list(instances(entries), index);
            }
            if let Some(pause) = pace.after(moved, started.elapsed()) {
                tracing::debug!(service = %name, index, ?pause, "blocking queries answer at once without a change; pausing");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

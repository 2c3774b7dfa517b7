//! Following a service: blocking queries on its passing list.

use std::sync::Arc;
use std::time::Duration;

use registry_core::{Backoff, Publisher};

use crate::client::Client;
use crate::format::from_consul;

/// The least time between two blocking queries of one watch when the first answered at once
/// without the index moving (nothing changed: a busy index or a flapping check).
const MIN_QUERY_GAP: Duration = Duration::from_millis(100);

/// The upstream of one service's shared watch: blocking queries on the passing list.
pub(crate) async fn follow(
    client: Arc<Client>,
    name: String,
    wait: Duration,
    publisher: Publisher,
) {
    let mut index = 0u64;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let started = tokio::time::Instant::now();
        match client.health(&name, Some((index, wait))).await {
            Ok((entries, new_index)) => {
                backoff.reset();
                let moved = new_index != index;
                // Consul: an index that goes backwards (the agent restarted) resets it, and
                // an index must be above zero.
                index = if new_index < index {
                    0
                } else {
                    new_index.max(1)
                };
                publisher.publish(entries.into_iter().filter_map(from_consul).collect());
                // Consul asks clients to rate-limit blocking queries: an answer that came at
                // once with the index where it was (nothing changed) is followed by a short
                // pause. Changes in a row (a rolling deploy) are read without one.
                let took = started.elapsed();
                if !moved && took < MIN_QUERY_GAP {
                    tokio::time::sleep(MIN_QUERY_GAP - took).await;
                }
            }
            Err(e) => {
                // The agent may come back with a lower index (dev mode forgets everything):
                // ask afresh, without blocking, once it answers.
                index = 0;
                publisher.report_error(e);
                tokio::time::sleep(backoff.delay()).await;
            }
        }
    }
}

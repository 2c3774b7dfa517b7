//! Picking an HTTP endpoint per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use registry_core::Discovery;
use url::Url;

use crate::{ClientError, Node, Options, Resolver};

/// How [`HttpBalancer`] picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Strategy {
    /// Weighted round-robin (smooth, as nginx does): each endpoint in turn, as often as its
    /// weight says.
    RoundRobin,
    /// Power of two choices: two endpoints drawn at random (by weight), the one with fewer
    /// requests in flight (per weight) wins.
    PowerOfTwo,
}

/// Picks an `http` endpoint of a service per request.
#[derive(Debug)]
pub struct HttpBalancer {
    resolver: Resolver,
    strategy: Strategy,
    /// Smooth round-robin's current weight of each endpoint.
    state: Mutex<HashMap<String, f64>>,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

/// A picked endpoint; while it lives it counts as a request in flight.
#[derive(Debug)]
pub struct Picked {
    url: Url,
    key: String,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

impl Picked {
    /// The endpoint's base URL, such as `http://10.0.0.1:8000/` (join a path to it).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The picked instance endpoint's `host:port`.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_flight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            // Only endpoints with requests in flight are kept: one that left the registry
            // is forgotten once its last request ends.
            if *n == 0 {
                in_flight.remove(&self.key);
            }
        }
    }
}

impl HttpBalancer {
    /// Balances over the `http` endpoints of `target` (`discovery:///NAME`).
    pub async fn new(
        discovery: Arc<dyn Discovery>,
        target: &str,
        options: Options,
        strategy: Strategy,
    ) -> Result<HttpBalancer, ClientError> {
        Ok(Self::from_resolver(
            Resolver::new(discovery, target, "http", options).await?,
            strategy,
        ))
    }

    /// Balances over what `resolver` resolves.
    pub fn from_resolver(resolver: Resolver, strategy: Strategy) -> HttpBalancer {
        HttpBalancer {
            resolver,
            strategy,
            state: Mutex::default(),
            in_flight: Arc::default(),
        }
    }

    /// The resolver behind it.
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Picks an endpoint for one request; fails fast when there is none.
    pub fn pick(&self) -> Result<Picked, ClientError> {
        let nodes = self.resolver.nodes()?;
        let node = match self.strategy {
            Strategy::RoundRobin => self.round_robin(&nodes),
            Strategy::PowerOfTwo => self.power_of_two(&nodes),
        };
        let key = node.endpoint.authority();
        *self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default() += 1;
        let mut url = node.endpoint.url().clone();
        url.set_query(None);
        Ok(Picked {
            url,
            key,
            in_flight: self.in_flight.clone(),
        })
    }

    /// Smooth weighted round-robin.
    fn round_robin<'a>(&self, nodes: &'a [Node]) -> &'a Node {
        let mut current = self.state.lock().unwrap_or_else(|p| p.into_inner());
        current.retain(|k, _| nodes.iter().any(|n| n.endpoint.authority() == *k));
        let total: f64 = nodes.iter().map(|n| n.weight).sum();
        let mut best = 0;
        let mut best_value = f64::MIN;
        for (i, node) in nodes.iter().enumerate() {
            let value = current.entry(node.endpoint.authority()).or_insert(0.0);
            *value += node.weight;
            if *value > best_value {
                best_value = *value;
                best = i;
            }
        }
        if let Some(value) = current.get_mut(&nodes[best].endpoint.authority()) {
            *value -= total;
        }
        &nodes[best]
    }

    /// Two draws by weight; the one with fewer requests in flight per weight wins.
    fn power_of_two<'a>(&self, nodes: &'a [Node]) -> &'a Node {
        // The resolver keeps weights positive and at most MAX_WEIGHT, so the total is finite
        // and positive: a range to draw from.
        let total: f64 = nodes.iter().map(|n| n.weight).sum();
        let draw = || {
            let mut at = rand::random_range(0.0..total);
            for node in nodes {
                if at < node.weight {
                    return node;
                }
                at -= node.weight;
            }
            &nodes[nodes.len() - 1]
        };
        let (a, b) = (draw(), draw());
        let in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let load = |n: &Node| {
            let count = in_flight.get(&n.endpoint.authority()).copied().unwrap_or(0);
            (count as f64 + 1.0) / n.weight
        };
        if load(b) < load(a) {
            b
        } else {
            a
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use registry_core::{MemoryRegistry, Registrar, ServiceInstance};

    use super::*;

    fn at(id: &str, endpoint: &str) -> ServiceInstance {
        ServiceInstance::builder(id, "churn")
            .endpoint(endpoint)
            .build()
            .expect("instance")
    }

    /// Endpoints come and go (a rolling deploy): the picker keeps no state for those that
    /// left, once their requests ended.
    #[tokio::test]
    async fn state_of_endpoints_that_left_is_forgotten() {
        let registry = MemoryRegistry::named("client-churn", Duration::from_secs(30));
        for strategy in [Strategy::RoundRobin, Strategy::PowerOfTwo] {
            let first = at("a", "http://10.0.2.1:80");
            registry.register(&first).await.expect("register");
            let balancer = HttpBalancer::new(
                Arc::new(registry.clone()),
                "discovery:///churn",
                Options::default(),
                strategy,
            )
            .await
            .expect("balancer");
            let mut previous = first;
            for round in 2..50u8 {
                let next = at(&format!("i{round}"), &format!("http://10.0.2.{round}:80"));
                registry.register(&next).await.expect("register");
                let held = balancer.pick().expect("pick");
                registry.deregister(&previous).await.expect("deregister");
                previous = next;
                let wanted = format!("10.0.2.{round}:80");
                tokio::time::timeout(Duration::from_secs(5), async {
                    while balancer.pick().expect("pick").key() != wanted {
                        tokio::task::yield_now().await;
                    }
                })
                .await
                .expect("the balancer follows the registry");
                drop(held);
            }
            let in_flight = balancer.in_flight.lock().expect("lock").len();
            assert_eq!(in_flight, 0, "{strategy:?}: no request is in flight");
            let remembered = balancer.state.lock().expect("lock").len();
            assert!(
                remembered <= 1,
                "{strategy:?}: {remembered} endpoints remembered"
            );
            registry.deregister(&previous).await.expect("deregister");
        }
    }
}

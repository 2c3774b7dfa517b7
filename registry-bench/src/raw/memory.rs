//! `memory://` has no client of its own: its writes (bulk data, the changes watchers wait
//! for) go through a second handle on the same named store, and no item has a raw arm.

use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use registry::{Registry, ServiceInstance};

use super::Writer;

/// A second handle on the store the measured handle uses.
pub struct MemoryWriter {
    registry: Arc<dyn Registry>,
}

impl MemoryWriter {
    /// A handle on the store of `url`.
    pub async fn connect(url: &str) -> Result<MemoryWriter> {
        Ok(MemoryWriter {
            registry: registry::connect(url)
                .await
                .with_context(|| format!("connect {url}"))?,
        })
    }
}

#[async_trait]
impl Writer for MemoryWriter {
    async fn bulk_write(&self, _service: &str, instances: &[ServiceInstance]) -> Result<()> {
        let all: Vec<_> = instances
            .iter()
            .map(|i| self.registry.register(i))
            .collect();
        futures::stream::iter(all)
            .buffer_unordered(64)
            .try_for_each(|()| async { Ok(()) })
            .await
            .context("memory register")
    }

    async fn put(&self, instance: &ServiceInstance) -> Result<()> {
        self.registry
            .register(instance)
            .await
            .context("memory register")
    }

    async fn bulk_delete(&self, service: &str) -> Result<()> {
        let listed = self.registry.get_service(service).await?;
        let all: Vec<_> = listed.iter().map(|i| self.registry.deregister(i)).collect();
        futures::stream::iter(all)
            .buffer_unordered(64)
            .try_for_each(|()| async { Ok(()) })
            .await
            .context("memory deregister")
    }

    async fn cleanup(&self) -> Result<()> {
        self.registry.close().await.context("memory close")
    }
}

//! A wrapper that answers calls a backend did not declare with [`Error::Unsupported`].

use async_trait::async_trait;

use crate::{
    Capabilities, Discovery, Error, Registrar, Registry, Result, ServiceInstance, Watcher,
};

/// Wraps a backend so that every call its [`Capabilities`] do not declare fails with
/// [`Error::Unsupported`] before reaching it. The facade's `connect` returns backends wrapped
/// in this.
#[derive(Debug)]
pub struct Checked<R> {
    inner: R,
    caps: Capabilities,
}

impl<R: Registry> Checked<R> {
    /// Wraps `inner`, reading its capabilities once.
    pub fn new(inner: R) -> Self {
        let caps = inner.capabilities();
        Checked { inner, caps }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    fn require(&self, declared: bool, operation: &'static str) -> Result<()> {
        if declared {
            Ok(())
        } else {
            Err(Error::Unsupported {
                backend: self.inner.scheme(),
                operation,
            })
        }
    }
}

#[async_trait]
impl<R: Registry> Registrar for Checked<R> {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        self.require(self.caps.register, "register")?;
        self.inner.register(instance).await
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        self.require(self.caps.register, "deregister")?;
        self.inner.deregister(instance).await
    }
}

#[async_trait]
impl<R: Registry> Discovery for Checked<R> {
    async fn get_service(&self, name: &str) -> Result<Vec<ServiceInstance>> {
        self.inner.get_service(name).await
    }

    async fn watch(&self, name: &str) -> Result<Watcher> {
        self.require(self.caps.watch, "watch")?;
        self.inner.watch(name).await
    }
}

#[async_trait]
impl<R: Registry> Registry for Checked<R> {
    fn scheme(&self) -> &'static str {
        self.inner.scheme()
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    async fn list_services(&self) -> Result<Vec<String>> {
        self.require(self.caps.list_services, "list_services")?;
        self.inner.list_services().await
    }

    fn registration(&self, name: &str, id: &str) -> Option<crate::RegistrationStatus> {
        self.inner.registration(name, id)
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryRegistry;

    /// A read-only registry: lists, nothing else.
    #[derive(Debug, Default)]
    struct ReadOnly(MemoryRegistry);

    #[async_trait]
    impl Registrar for ReadOnly {
        async fn register(&self, instance: &ServiceInstance) -> Result<()> {
            self.0.register(instance).await
        }
        async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
            self.0.deregister(instance).await
        }
    }

    #[async_trait]
    impl Discovery for ReadOnly {
        async fn get_service(&self, name: &str) -> Result<Vec<ServiceInstance>> {
            self.0.get_service(name).await
        }
        async fn watch(&self, name: &str) -> Result<Watcher> {
            self.0.watch(name).await
        }
    }

    #[async_trait]
    impl Registry for ReadOnly {
        fn scheme(&self) -> &'static str {
            "readonly"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
    }

    #[tokio::test]
    async fn undeclared_calls_are_unsupported_and_reach_nothing() {
        let checked = Checked::new(ReadOnly::default());
        let instance = ServiceInstance::builder("1", "svc")
            .endpoint("http://127.0.0.1:1")
            .build()
            .unwrap();
        for err in [
            checked.register(&instance).await.unwrap_err(),
            checked.deregister(&instance).await.unwrap_err(),
            checked.watch("svc").await.unwrap_err(),
            checked.list_services().await.unwrap_err(),
        ] {
            assert!(
                matches!(
                    err,
                    Error::Unsupported {
                        backend: "readonly",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(!err.is_temporary());
        }
        assert!(checked
            .inner()
            .0
            .get_service("svc")
            .await
            .unwrap()
            .is_empty());
        assert!(checked.get_service("svc").await.unwrap().is_empty());
    }
}

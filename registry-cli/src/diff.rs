//! `registryctl diff URL_A URL_B [SERVICE]`: the instances one registry lists and the other
//! does not, and those both list with different values. Exit code 0 when they agree, 1 when
//! they differ (like `diff`).

use std::collections::BTreeMap;

use registry::{Registry, Result, ServiceInstance};

use crate::mirror::MIRROR_KEY;

/// How two registries differ.
#[derive(Debug, Default)]
pub struct Differences {
    /// Instances only the first lists.
    pub only_a: Vec<ServiceInstance>,
    /// Instances only the second lists.
    pub only_b: Vec<ServiceInstance>,
    /// Instances both list (same service and id) with different values: (first, second).
    pub changed: Vec<(ServiceInstance, ServiceInstance)>,
    /// How many services were compared.
    pub services: usize,
    /// How many instances both list alike.
    pub same: usize,
}

impl Differences {
    /// Whether the registries agree.
    pub fn is_empty(&self) -> bool {
        self.only_a.is_empty() && self.only_b.is_empty() && self.changed.is_empty()
    }
}

/// An instance as compared: a mirror's copy compares equal to its original (its mark is
/// left out).
fn compared(instance: &ServiceInstance) -> ServiceInstance {
    let mut instance = instance.clone();
    instance.metadata.remove(MIRROR_KEY);
    instance
}

/// Compares `service` (or every service either registry names) in `a` and `b`.
pub async fn diff(
    a: &dyn Registry,
    b: &dyn Registry,
    service: Option<&str>,
) -> Result<Differences> {
    let services: Vec<String> = match service {
        Some(service) => vec![service.to_owned()],
        None => {
            let (in_a, in_b) = tokio::join!(a.list_services(), b.list_services());
            let mut all = in_a?;
            all.extend(in_b?);
            all.sort();
            all.dedup();
            all
        }
    };
    let mut found = Differences {
        services: services.len(),
        ..Differences::default()
    };
    for service in &services {
        let (in_a, in_b) = tokio::join!(a.get_service(service), b.get_service(service));
        let in_a: BTreeMap<String, ServiceInstance> =
            in_a?.into_iter().map(|i| (i.id.clone(), i)).collect();
        let mut in_b: BTreeMap<String, ServiceInstance> =
            in_b?.into_iter().map(|i| (i.id.clone(), i)).collect();
        for (id, x) in in_a {
            match in_b.remove(&id) {
                None => found.only_a.push(x),
                Some(y) if compared(&x) == compared(&y) => found.same += 1,
                Some(y) => found.changed.push((x, y)),
            }
        }
        found.only_b.extend(in_b.into_values());
    }
    Ok(found)
}

/// What differs between two values of one instance, field by field.
fn changes(a: &ServiceInstance, b: &ServiceInstance) -> Vec<String> {
    let (a, b) = (compared(a), compared(b));
    let mut out = Vec::new();
    if a.version != b.version {
        out.push(format!("version {:?} → {:?}", a.version, b.version));
    }
    if a.endpoints != b.endpoints {
        out.push(format!(
            "endpoints [{}] → [{}]",
            a.endpoints.join(" "),
            b.endpoints.join(" ")
        ));
    }
    let keys: std::collections::BTreeSet<&String> =
        a.metadata.keys().chain(b.metadata.keys()).collect();
    for key in keys {
        match (a.metadata.get(key), b.metadata.get(key)) {
            (x, y) if x == y => {}
            (Some(x), Some(y)) => out.push(format!("metadata {key}={x:?} → {y:?}")),
            (Some(x), None) => out.push(format!("metadata {key}={x:?} → (none)")),
            (None, Some(y)) => out.push(format!("metadata {key}: (none) → {y:?}")),
            (None, None) => {}
        }
    }
    out
}

/// Prints the differences: `diff -u`-like lines, or one JSON document.
pub fn print(found: &Differences, a_url: &str, b_url: &str, json: bool) {
    if json {
        let value = |i: &ServiceInstance| -> serde_json::Value {
            serde_json::from_str(&i.to_json()).unwrap_or(serde_json::Value::Null)
        };
        let document = serde_json::json!({
            "a": a_url,
            "b": b_url,
            "only_a": found.only_a.iter().map(value).collect::<Vec<_>>(),
            "only_b": found.only_b.iter().map(value).collect::<Vec<_>>(),
            "changed": found
                .changed
                .iter()
                .map(|(x, y)| serde_json::json!({ "a": value(x), "b": value(y) }))
                .collect::<Vec<_>>(),
            "services": found.services,
            "same": found.same,
        });
        println!("{document}");
        return;
    }
    if !found.is_empty() {
        println!("--- {a_url}");
        println!("+++ {b_url}");
    }
    for i in &found.only_a {
        println!("- {} {}", i.name, i.id);
    }
    for i in &found.only_b {
        println!("+ {} {}", i.name, i.id);
    }
    for (x, y) in &found.changed {
        println!("~ {} {}: {}", x.name, x.id, changes(x, y).join("; "));
    }
    eprintln!(
        "{} service(s): {} instance(s) alike, {} only in the first, {} only in the second, {} different",
        found.services,
        found.same,
        found.only_a.len(),
        found.only_b.len(),
        found.changed.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, version: &str) -> ServiceInstance {
        ServiceInstance::builder(id, "svc")
            .version(version)
            .metadata("zone", "a")
            .endpoint("http://127.0.0.1:8000")
            .build()
            .expect("valid")
    }

    #[tokio::test]
    async fn differences_by_id_and_value_a_copy_equal_to_its_original() {
        let a = registry::connect("memory://diff-unit-a").await.unwrap();
        let b = registry::connect("memory://diff-unit-b").await.unwrap();
        let mut copy = instance("same", "v1");
        copy.metadata
            .insert(MIRROR_KEY.into(), "from memory://diff-unit-a".into());
        for (registry, instances) in [
            (
                &a,
                vec![
                    instance("same", "v1"),
                    instance("only-a", "v1"),
                    instance("changed", "v1"),
                ],
            ),
            (
                &b,
                vec![copy, instance("only-b", "v1"), instance("changed", "v2")],
            ),
        ] {
            for i in instances {
                registry.register(&i).await.unwrap();
            }
        }
        let found = diff(a.as_ref(), b.as_ref(), Some("svc")).await.unwrap();
        assert_eq!(found.same, 1);
        assert_eq!(found.only_a, [instance("only-a", "v1")]);
        assert_eq!(found.only_b, [instance("only-b", "v1")]);
        assert_eq!(found.changed.len(), 1);
        assert_eq!(
            changes(&found.changed[0].0, &found.changed[0].1),
            ["version \"v1\" → \"v2\""]
        );
        let all = diff(a.as_ref(), b.as_ref(), None).await.unwrap();
        assert_eq!(all.services, 1);
        assert!(!all.is_empty());
        let itself = diff(a.as_ref(), a.as_ref(), None).await.unwrap();
        assert!(itself.is_empty(), "{itself:?}");
    }
}

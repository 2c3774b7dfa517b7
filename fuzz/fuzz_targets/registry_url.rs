//! A registry URL, as given by a caller (`registry::connect(url)`, `REGISTRY_URL`): the
//! parsing the facade and every backend do before connecting: `RegistryUrl::parse`, then
//! the `memory://` handle or the backend's `Config::from_url`. Nothing connects. Besides not
//! panicking: no error, redacted URL or `Debug` of a config shows the password (or a secret
//! option such as `token=`) the URL carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_core::{MemoryRegistry, RegistryUrl};

/// Parses `text` as `connect` would for every scheme, and returns what it shows: errors,
/// the redacted URL, and each config's `Debug`.
fn shown(text: &str) -> Vec<(&'static str, String)> {
    let mut shown = Vec::new();
    match RegistryUrl::parse(text) {
        Ok(parsed) => {
            shown.push(("redacted()", parsed.redacted().to_owned()));
            let _ = (parsed.scheme(), parsed.url());
            for host in parsed.hosts() {
                assert!(
                    !host.host.is_empty(),
                    "an empty host in {:?}",
                    parsed.hosts()
                );
                let _ = host.with_default_port(1);
            }
            if parsed.scheme() == "memory" {
                match parsed.single().and_then(MemoryRegistry::from_url) {
                    Ok(memory) => drop(memory),
                    Err(e) => shown.push(("memory's error", e.to_string())),
                }
            }
        }
        Err(e) => shown.push(("RegistryUrl's error", e.to_string())),
    }
    // Each backend refuses the others' schemes.
    let configs = [
        registry_etcd::Config::from_url(text).map(|c| format!("{c:?}")),
        registry_consul::Config::from_url(text).map(|c| format!("{c:?}")),
        registry_zookeeper::Config::from_url(text).map(|c| format!("{c:?}")),
        registry_nacos::Config::from_url(text).map(|c| format!("{c:?}")),
    ];
    for config in configs {
        shown.push(match config {
            Ok(debug) => ("a config's Debug", debug),
            Err(e) => ("a backend's error", e.to_string()),
        });
    }
    shown
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let shown_here = shown(&text);
    for secret in registry_fuzz::url_secrets(&text) {
        let Some((what, leak)) = shown_here.iter().find(|(_, s)| s.contains(&secret)) else {
            continue;
        };
        // The same letters shown with another secret in its place are a fixed word of a
        // message, not the secret.
        let other = text.replace(&secret, &registry_fuzz::other_than(&secret));
        if !shown(&other).iter().any(|(_, s)| s.contains(&secret)) {
            panic!("{what} shows the secret {secret:?} of {text:?}: {leak}");
        }
    }
});

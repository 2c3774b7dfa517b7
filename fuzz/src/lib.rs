//! What the fuzz targets in `fuzz_targets/` share: reading a key and a value from one input,
//! the service a watch follows, and checking what a decoder let through.

use registry_core::ServiceInstance;

/// The service followed when the input does not name a valid one.
pub const DEFAULT_NAME: &str = "helloworld";

/// `name` when it is a valid service name (a watch only follows those), `helloworld`
/// otherwise.
pub fn watched_name(name: &str) -> String {
    match registry_core::validate::validate_name(name) {
        Ok(()) => name.to_owned(),
        Err(_) => DEFAULT_NAME.to_owned(),
    }
}

/// Splits `data` at its first newline into a key and a value (all value when there is
/// none), and names the service watched: the key's second-to-last `/` segment, as in
/// `/microservices/helloworld/1` (see [`watched_name`]).
pub fn key_value(data: &[u8]) -> (&[u8], &[u8], String) {
    let (key, value) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&data[..0], data),
    };
    let key_text = String::from_utf8_lossy(key);
    let name = watched_name(key_text.rsplit('/').nth(1).unwrap_or_default());
    (key, value, name)
}

/// What a decoder lets through is a valid instance of the service watched.
pub fn check_instance_of(instance: &ServiceInstance, name: &str) {
    assert_eq!(
        instance.name, name,
        "an instance of another service: {instance:?}"
    );
    if let Err(e) = instance.validate() {
        panic!("an invalid instance came out ({e}): {instance:?}");
    }
}

/// The secrets a registry URL carries that no error, redacted URL or `Debug` may show: the
/// password after the user, and the values of options whose name says they are secret
/// (`password`, `token`, `secret`; the password of `digest=user:password`). Only those of
/// at least 8 ASCII letters and digits (nothing to percent-decode) that occur once in the
/// text, ignoring case, so that finding one in what is shown cannot be the text's other
/// occurrence (such as a host). The text is split as `RegistryUrl::parse` splits it.
pub fn url_secrets(text: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some((_, rest)) = text.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                secrets.push(password);
            }
        }
    }
    let before_fragment = text.split('#').next().unwrap_or_default();
    if let Some((_, query)) = before_fragment.split_once('?') {
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=') {
                let key = key.to_ascii_lowercase();
                if key.contains("digest") {
                    // user:password; the user is no secret.
                    secrets.extend(value.split_once(':').map(|(_, password)| password));
                } else if ["password", "token", "secret"]
                    .iter()
                    .any(|s| key.contains(s))
                {
                    secrets.push(value);
                }
            }
        }
    }
    let lower = text.to_ascii_lowercase();
    let mut secrets: Vec<String> = secrets
        .into_iter()
        .filter(|s| s.len() >= 8 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
        .filter(|s| lower.matches(&s.to_ascii_lowercase()).count() == 1)
        .map(str::to_owned)
        .collect();
    secrets.sort();
    secrets.dedup();
    secrets
}

/// `secret` with every character changed (letters and digits to the next one): to tell a
/// secret that leaked from the same letters shown for another reason (a fixed word of a
/// message), parse the text again with this in its place.
pub fn other_than(secret: &str) -> String {
    secret
        .chars()
        .map(|c| match c {
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            c => char::from_u32(c as u32 + 1).unwrap_or(c),
        })
        .collect()
}

//! An endpoint URL, as read from a registry or given by a caller: `Endpoint::parse`. What
//! it accepts parses again to the same endpoint, and every accessor answers; what validation
//! takes as plain without parsing (`validate::is_plain_endpoint`) the parser accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_core::Endpoint;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Validation skips the parser for endpoints of the plainest form: the parser must
    // accept every one of them.
    let plain = registry_core::validate::is_plain_endpoint(&text);
    let Ok(endpoint) = Endpoint::parse(&text) else {
        assert!(!plain, "validation takes {text:?} as plain, the parser refuses it");
        return;
    };
    assert_eq!(endpoint.as_str(), text, "the text is kept as given");
    match Endpoint::parse(endpoint.as_str()) {
        Ok(again) => assert_eq!(again, endpoint, "parsing as_str() again differs"),
        Err(e) => panic!("as_str() does not parse again ({e}): {endpoint:?}"),
    }
    assert!(!endpoint.scheme().is_empty(), "{endpoint:?}");
    assert!(!endpoint.host().is_empty(), "{endpoint:?}");
    assert_ne!(endpoint.port(), 0, "{endpoint:?}");
    // The port dialled (`authority()`) is the port of the URL the endpoint carries.
    assert_eq!(
        endpoint.url().port_or_known_default(),
        Some(endpoint.port()),
        "port() is not the URL's port: {endpoint:?}"
    );
    let _ = endpoint.authority();
    let _ = endpoint.is_secure();
    let _ = endpoint.query("isSecure");
    let _ = (endpoint.to_string(), format!("{endpoint:?}"));
});

//! Input validation shared by every backend.
//!
//! # The rule for service names and instance ids
//!
//! A name or id is 1 to 128 characters from `A-Z a-z 0-9 . _ -`, and starts with a letter or a
//! digit. Every backend stores such a string unescaped: as an etcd key segment and a ZooKeeper
//! node name (no `/`, never `.` or `..`), as a Consul service name and id, and inside a Nacos
//! service name (no `@@`, no `:`).

use crate::{Error, Result};

/// The longest accepted service name or instance id.
pub const MAX_LEN: usize = 128;

/// Checks a service name against [the rule](self).
pub fn validate_name(name: &str) -> Result<()> {
    check_token("name", name)
}

/// Checks an instance id against [the rule](self).
pub fn validate_id(id: &str) -> Result<()> {
    check_token("id", id)
}

fn check_token(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, value, "must not be empty"));
    }
    if value.len() > MAX_LEN {
        return Err(Error::invalid(
            field,
            value,
            format!("longer than {MAX_LEN} characters"),
        ));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(Error::invalid(
            field,
            value,
            "must start with an ASCII letter or digit",
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::invalid(
            field,
            value,
            format!("character {bad:?} is not allowed (use A-Z a-z 0-9 . _ -)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_names() {
        for ok in [
            "helloworld",
            "hello-world",
            "com.example.Greeter",
            "8fc08b88-e37b-11ec-bb6f-88d7f62323b4",
            "a",
            "svc_1",
        ] {
            assert!(validate_name(ok).is_ok(), "{ok}");
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_what_a_backend_cannot_store() {
        let long = "a".repeat(MAX_LEN + 1);
        for bad in [
            "", "a/b", ".", "..", "-x", "a b", "a@@b", "a:b", "é", "a\n", &long,
        ] {
            let err = validate_name(bad).expect_err(bad);
            assert!(
                matches!(err, Error::InvalidInput { field: "name", .. }),
                "{err}"
            );
            assert!(!err.is_temporary());
        }
    }
}

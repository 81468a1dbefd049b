//! The "safe id" grammar PBS uses for namespace components, backup ids, realms and token names:
//! `^[A-Za-z0-9_][A-Za-z0-9._-]*$`, ASCII only.

/// Why a string is not a safe id, or `None` if it is one.
pub(crate) fn problem(s: &str) -> Option<&'static str> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.first() else {
        return Some("must not be empty");
    };
    if !(first.is_ascii_alphanumeric() || *first == b'_') {
        return Some("must start with a letter, a digit or '_'");
    }
    if bytes[1..]
        .iter()
        .any(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
    {
        return Some("may only contain letters, digits, '_', '.' and '-'");
    }
    None
}

/// Checks a datastore name: a safe id of 3 to 32 bytes, as PBS requires. The name is also the
/// lock folder and the S3 key prefix of the datastore, so it must never contain a `/`.
///
/// ```
/// use keepsake_hierarchy::check_datastore_name;
/// assert!(check_datastore_name("store1").is_ok());
/// assert!(check_datastore_name("..").is_err());
/// assert!(check_datastore_name("a/b").is_err());
/// ```
pub fn check_datastore_name(name: &str) -> crate::Result<()> {
    let reason = if !(3..=32).contains(&name.len()) {
        Some("must be 3 to 32 bytes long")
    } else {
        problem(name)
    };
    match reason {
        Some(reason) => Err(crate::Error::InvalidDatastoreName {
            input: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_datastore_name, problem};

    #[test]
    fn datastore_names() {
        for ok in ["abc", "store1", "a.b-c_d", &"x".repeat(32)] {
            assert!(check_datastore_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ab", ".ab", "a/bc", &"x".repeat(33), "störe"] {
            assert!(check_datastore_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grammar() {
        for ok in ["a", "_", "0", "a.b-c_d", "100", "A..", "x-"] {
            assert_eq!(problem(ok), None, "{ok}");
        }
        for bad in [
            "", ".", "..", "-a", ".a", "a/b", "a b", "a\0", "ä", "a:b", "a\n",
        ] {
            assert!(problem(bad).is_some(), "{bad:?}");
        }
    }
}

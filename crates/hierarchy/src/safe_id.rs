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

#[cfg(test)]
mod tests {
    use super::problem;

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

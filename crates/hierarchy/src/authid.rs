//! Authentication ids: the owners of backup groups (`root@pam`, `user@pbs!token`).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::safe_id;

/// Longest auth id (PBS's schema limit).
pub const MAX_AUTHID_LENGTH: usize = 64;

/// An auth id: `user@realm` or, for an API token, `user@realm!token`.
///
/// The user name is any text without whitespace, `:`, `/` or control characters (it may contain `@`:
/// the realm starts after the *last* `@`); the realm is a safe id of 2 to 32 bytes; the token name a
/// safe id. The whole id is 3 to 64 bytes.
///
/// ```
/// use keepsake_hierarchy::Authid;
///
/// let token: Authid = "user@pbs!tok".parse()?;
/// assert_eq!(token.user(), "user");
/// assert_eq!(token.realm(), "pbs");
/// assert_eq!(token.token(), Some("tok"));
/// let user: Authid = "user@pbs".parse()?;
/// // A user may act on groups owned by their own tokens.
/// assert!(user.may_act_as_owner(&token));
/// assert!(!token.may_act_as_owner(&user));
/// # Ok::<(), keepsake_hierarchy::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Authid {
    text: String,
    /// Byte index of the `@` that starts the realm.
    at: usize,
    /// Byte index of the `!` that starts the token name, if any.
    bang: Option<usize>,
}

impl Authid {
    /// Parses and checks an auth id.
    pub fn new(s: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidAuthid {
            input: s.to_owned(),
            reason,
        };
        if s.len() < 3 || s.len() > MAX_AUTHID_LENGTH {
            return Err(invalid("must be 3 to 64 bytes long"));
        }
        let at = s.rfind('@').ok_or_else(|| invalid("expected user@realm"))?;
        let user = &s[..at];
        let rest = &s[at + 1..];
        if user.is_empty() {
            return Err(invalid("empty user name"));
        }
        if user
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/')
        {
            return Err(invalid(
                "user name must not contain whitespace, ':', '/' or control characters",
            ));
        }
        let (realm, token) = match rest.split_once('!') {
            Some((realm, token)) => (realm, Some(token)),
            None => (rest, None),
        };
        if realm.len() < 2 || realm.len() > 32 || safe_id::problem(realm).is_some() {
            return Err(invalid("realm must be a safe id of 2 to 32 bytes"));
        }
        if let Some(token) = token {
            if token.is_empty() {
                return Err(invalid("empty token name"));
            }
            if safe_id::problem(token).is_some() {
                return Err(invalid("token name must be a safe id"));
            }
        }
        Ok(Self {
            text: s.to_owned(),
            at,
            bang: token.map(|_| at + 1 + realm.len()),
        })
    }

    /// The user name (before the last `@`).
    pub fn user(&self) -> &str {
        &self.text[..self.at]
    }

    /// The realm (`pam`, `pbs`, …).
    pub fn realm(&self) -> &str {
        &self.text[self.at + 1..self.bang.unwrap_or(self.text.len())]
    }

    /// The token name, for API tokens.
    pub fn token(&self) -> Option<&str> {
        self.bang.map(|b| &self.text[b + 1..])
    }

    /// Whether this is an API token.
    pub fn is_token(&self) -> bool {
        self.bang.is_some()
    }

    /// The user this id belongs to: itself for a user, the token's user for a token.
    pub fn user_id(&self) -> Authid {
        match self.bang {
            None => self.clone(),
            Some(b) => Self {
                text: self.text[..b].to_owned(),
                at: self.at,
                bang: None,
            },
        }
    }

    /// PBS's ownership rule: `self` may act on a group owned by `owner` if it is the owner, or if the
    /// owner is a token of the user `self`.
    pub fn may_act_as_owner(&self, owner: &Authid) -> bool {
        self == owner || (owner.is_token() && !self.is_token() && owner.user_id() == *self)
    }

    /// The auth id as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Authid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Authid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Authid({:?})", self.text)
    }
}

impl FromStr for Authid {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

crate::serde_via_str!(Authid);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<(&str, &str, Option<&str>)>) {
        match (Authid::new(input), expected) {
            (Ok(a), Some((user, realm, token))) => {
                assert_eq!(
                    (a.user(), a.realm(), a.token()),
                    (user, realm, token),
                    "{input}"
                );
                assert_eq!(a.to_string(), input);
            }
            (Err(Error::InvalidAuthid { .. }), None) => {}
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn grammar() {
        check("root@pam", Some(("root", "pam", None)));
        check("user@pbs!tok", Some(("user", "pbs", Some("tok"))));
        check(
            "john@example.com@ad",
            Some(("john@example.com", "ad", None)),
        );
        check("a@bc", Some(("a", "bc", None)));
        check("root", None);
        check("@pam", None);
        check("root@", None);
        check("root@p", None);
        check("root@pam!", None);
        check("root@pam!.x", None);
        check("ro ot@pam", None);
        check("ro/ot@pam", None);
        check("ro:ot@pam", None);
        check("root@pa m", None);
        check("root@pam!a!b", None);
        check(&format!("{}@pam", "u".repeat(61)), None);
        check(
            &format!("{}@pam", "u".repeat(60)),
            Some((&"u".repeat(60), "pam", None)),
        );
    }

    #[test]
    fn ownership() {
        let root: Authid = "root@pam".parse().unwrap();
        let tok: Authid = "root@pam!t".parse().unwrap();
        let other: Authid = "root@pam!u".parse().unwrap();
        assert!(root.may_act_as_owner(&root));
        assert!(root.may_act_as_owner(&tok));
        assert!(!tok.may_act_as_owner(&root));
        assert!(!other.may_act_as_owner(&tok));
        assert_eq!(tok.user_id(), root);
    }
}

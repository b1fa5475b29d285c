//! The JSON codec envelope (COMPAT.md §5): `data` kept as raw JSON text,
//! targets parsed for the permission check.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
pub struct Envelope {
    pub data: Box<RawValue>,
    #[serde(default)]
    pub user_ids: Option<Vec<Value>>,
    #[serde(default)]
    pub group_ids: Option<Vec<Value>>,
    #[serde(default)]
    pub client_ids: Option<Vec<Value>>,
}

impl Envelope {
    pub fn parse(text: &str) -> Result<Envelope> {
        serde_json::from_str(text).map_err(|e| {
            Error::InvalidMessage(format!(
                "message envelope is not the JSON codec's format: {e}"
            ))
        })
    }
}

/// Who a web client is, for the permission check (COMPAT.md §3.5).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub client_id: String,
    /// `Value::Null` when there is no user.
    pub user_id: Value,
    pub group_ids: Vec<Value>,
    pub site_id: Option<String>,
}

/// Ruby `==` between a target user id and the client's: numbers compare by
/// value (`1 == 1.0`), everything else structurally; nil never matches.
fn same_user(target: &Value, user: &Value) -> bool {
    match (target, user) {
        (_, Value::Null) => false,
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => a.as_f64() == b.as_f64(),
        },
        _ => target == user,
    }
}

/// Ruby hash equality for group ids: `1` and `1.0` differ, `1` and `"1"` differ.
fn same_group(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.is_f64() == y.is_f64()
                && (x.as_i64() == y.as_i64() && x.as_u64() == y.as_u64())
                && x.as_f64() == y.as_f64()
        }
        _ => a == b,
    }
}

impl Envelope {
    /// The target part of the permission check (client message filters run in Ruby).
    pub fn allows(&self, who: &Identity) -> bool {
        let client_ok = match &self.client_ids {
            None => true,
            Some(ids) if ids.is_empty() => true,
            Some(ids) => ids
                .iter()
                .any(|id| id.as_str() == Some(who.client_id.as_str())),
        };
        if !client_ok {
            return false;
        }
        let users = self.user_ids.as_deref().unwrap_or(&[]);
        let groups = self.group_ids.as_deref().unwrap_or(&[]);
        if users.is_empty() && groups.is_empty() {
            return true;
        }
        users.iter().any(|u| same_user(u, &who.user_id))
            || groups
                .iter()
                .any(|g| who.group_ids.iter().any(|mine| same_group(g, mine)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(text: &str) -> Envelope {
        Envelope::parse(text).unwrap()
    }

    fn who(user: Value, groups: Vec<Value>, client: &str) -> Identity {
        Identity {
            client_id: client.into(),
            user_id: user,
            group_ids: groups,
            site_id: None,
        }
    }

    #[test]
    fn keeps_data_as_raw_text() {
        let e =
            env(r#"{"data":{"b":1,"a":"x|y"},"user_ids":null,"group_ids":null,"client_ids":null}"#);
        assert_eq!(e.data.get(), r#"{"b":1,"a":"x|y"}"#);
        assert!(e.allows(&who(Value::Null, vec![], "c")));
    }

    #[test]
    fn users_or_groups_and_clients() {
        let e = env(r#"{"data":1,"user_ids":[1],"group_ids":[10],"client_ids":null}"#);
        assert!(e.allows(&who(json!(1), vec![], "c")));
        assert!(e.allows(&who(json!(1.0), vec![], "c")));
        assert!(!e.allows(&who(json!("1"), vec![], "c")));
        assert!(e.allows(&who(json!(2), vec![json!(10)], "c")));
        assert!(!e.allows(&who(json!(2), vec![json!(10.0)], "c")));
        assert!(!e.allows(&who(Value::Null, vec![json!("10")], "c")));
        let c = env(r#"{"data":1,"user_ids":[1],"group_ids":null,"client_ids":["abc"]}"#);
        assert!(c.allows(&who(json!(1), vec![], "abc")));
        assert!(!c.allows(&who(json!(1), vec![], "abd")));
        assert!(!c.allows(&who(json!(2), vec![], "abc")));
    }

    #[test]
    fn rejects_foreign_formats() {
        assert!(Envelope::parse("not json").is_err());
        assert!(Envelope::parse(r#"{"user_ids":null}"#).is_err());
    }
}

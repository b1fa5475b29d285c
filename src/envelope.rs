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
        // serde's derived struct visitor also accepts a JSON array of the
        // fields in order (`[data, user_ids, ...]`); the codec only writes objects.
        if !text.trim_start().starts_with('{') {
            return Err(Error::InvalidMessage(
                "message envelope is not the JSON codec's format: not a JSON object".to_string(),
            ));
        }
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

/// The untargeted envelope's bytes before and after the data's JSON: what
/// the JSON codec makes of `{"data" => data, "user_ids" => nil, ...}`.
pub const UNTARGETED_HEAD: &str = "{\"data\":";
pub const UNTARGETED_TAIL: &str = ",\"user_ids\":null,\"group_ids\":null,\"client_ids\":null}";

/// Appends `text` as a JSON string the way Ruby's JSON generator writes it
/// (the default state: `"`, `\` and control characters escaped, the short
/// forms `\b \f \n \r \t`, others as lowercase `\u00XX`; `/` and
/// everything from 0x7f up as they are).
pub fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    let mut start = 0;
    for (at, byte) in text.bytes().enumerate() {
        let escape: &str = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x0c => "\\f",
            0x08 => "\\b",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[start..at]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = at + 1;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_strings_are_escaped_as_rubys_generator_escapes_them() {
        let mut out = String::new();
        push_json_string(
            &mut out,
            "a\"b\\c/\u{0}\u{1f}\n\r\t\u{8}\u{c}\u{7f}\u{2028}\u{e9}",
        );
        assert_eq!(
            out,
            "\"a\\\"b\\\\c/\\u0000\\u001f\\n\\r\\t\\b\\f\u{7f}\u{2028}\u{e9}\""
        );
    }

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

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Target values of a few types: integers, the same as floats and as
        /// strings, so that type-sensitivity (§9 Q46) is exercised.
        fn id() -> impl Strategy<Value = Value> {
            prop_oneof![
                (0i64..4).prop_map(|n| json!(n)),
                (0i64..4).prop_map(|n| json!(n as f64)),
                (0i64..4).prop_map(|n| json!(n.to_string())),
            ]
        }

        fn ids() -> impl Strategy<Value = Option<Vec<Value>>> {
            proptest::option::of(proptest::collection::vec(id(), 0..4))
        }

        fn client_ids() -> impl Strategy<Value = Option<Vec<Value>>> {
            proptest::option::of(proptest::collection::vec(
                prop_oneof![Just(json!("a")), Just(json!("b")), Just(json!(1))],
                0..3,
            ))
        }

        /// COMPAT.md §3.5, written out independently of `allows`.
        fn model(
            users: &Option<Vec<Value>>,
            groups: &Option<Vec<Value>>,
            clients: &Option<Vec<Value>>,
            who: &Identity,
        ) -> bool {
            let client_ok = match clients {
                None => true,
                Some(c) => c.is_empty() || c.contains(&json!(who.client_id)),
            };
            let num = |v: &Value| v.as_f64();
            let users = users.clone().unwrap_or_default();
            let groups = groups.clone().unwrap_or_default();
            // Ruby `==`: 1 == 1.0, 1 != "1", nil never matches.
            let user_ok = !who.user_id.is_null()
                && users.iter().any(|u| match (u, &who.user_id) {
                    (Value::Number(_), Value::Number(_)) => num(u) == num(&who.user_id),
                    _ => u == &who.user_id,
                });
            // Hash equality: same type (integer vs float) and same value.
            let group_ok = groups.iter().any(|g| {
                who.group_ids
                    .iter()
                    .any(|m| g == m && g.is_f64() == m.is_f64())
            });
            client_ok && (user_ok || group_ok || (users.is_empty() && groups.is_empty()))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// Arbitrary text never panics the parser.
            #[test]
            fn parse_never_panics(text in "\\PC*") {
                let _ = Envelope::parse(&text);
            }

            /// Arbitrary JSON (nested, wrong types, extra keys) never panics; the
            /// envelope parses iff `data` is present and the lists are lists or null.
            #[test]
            fn parse_arbitrary_json(v in arbitrary_json()) {
                let text = v.to_string();
                let parsed = Envelope::parse(&text);
                let ok_list = |k: &str| v.get(k).is_none_or(|x| x.is_null() || x.is_array());
                let expected = v.is_object() && v.get("data").is_some()
                    && ok_list("user_ids") && ok_list("group_ids") && ok_list("client_ids");
                prop_assert_eq!(parsed.is_ok(), expected, "{}", text);
                if let Ok(e) = parsed {
                    prop_assert_eq!(e.data.get(), v["data"].to_string());
                }
            }

            /// Targets: `allows` is exactly the §3.5 rule.
            #[test]
            fn targets_follow_the_rule(users in ids(), groups in ids(), clients in client_ids(),
                                       user in prop_oneof![Just(Value::Null), id()],
                                       mine in proptest::collection::vec(id(), 0..3),
                                       client in prop_oneof![Just("a"), Just("b"), Just("1")]) {
                let text = json!({"data": "x", "user_ids": users, "group_ids": groups,
                                  "client_ids": clients}).to_string();
                let e = Envelope::parse(&text).unwrap();
                let who = who(user, mine, client);
                prop_assert_eq!(e.allows(&who), model(&users, &groups, &clients, &who), "{}", text);
            }
        }

        fn arbitrary_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                "\\PC{0,8}".prop_map(Value::from),
            ];
            let tree = leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    proptest::collection::vec(
                        (
                            prop_oneof![
                                Just("data".to_string()),
                                Just("user_ids".to_string()),
                                Just("group_ids".to_string()),
                                Just("client_ids".to_string()),
                                "[a-z]{1,3}",
                            ],
                            inner
                        ),
                        0..6,
                    )
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            });
            // Mostly objects with the envelope's keys.
            prop_oneof![
                tree.clone(),
                (
                    tree.clone(),
                    proptest::option::of(tree.clone()),
                    proptest::option::of(tree)
                )
                    .prop_map(|(d, u, g)| {
                        let mut m = serde_json::Map::new();
                        m.insert("data".into(), d);
                        if let Some(u) = u {
                            m.insert("user_ids".into(), u);
                        }
                        if let Some(g) = g {
                            m.insert("group_ids".into(), g);
                        }
                        Value::Object(m)
                    }),
            ]
        }
    }
}

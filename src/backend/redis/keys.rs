//! Key names, the publish script and the small parsing helpers of the Redis
//! backend (COMPAT.md §4.2). Pure functions, unit-tested here.

pub const GLOBAL_ID_KEY: &str = "__mb_global_id_n";
pub const GLOBAL_BACKLOG_KEY: &str = "__mb_global_backlog_n";
pub const BACKLOG_ID_PREFIX: &str = "__mb_backlog_id_n_";
pub const BACKLOG_PREFIX: &str = "__mb_backlog_n_";
pub const READONLY_PROBE_KEY: &str = "__mb_is_readonly";
/// The storage epoch (ours only: reference processes never read it; their
/// `reset!` deletes it with every other `__mb_*` key, which is a new epoch).
pub const EPOCH_KEY: &str = "__mb_epoch";
/// Every key of the bus (SCAN pattern of `reset!`).
pub const ALL_KEYS_PATTERN: &str = "__mb_*";
/// Every channel backlog set (SCAN pattern of `expire_all_backlogs!`).
pub const CHANNEL_BACKLOGS_PATTERN: &str = "__mb_backlog_n_*";

pub fn backlog_id_key(channel: &str) -> String {
    format!("{BACKLOG_ID_PREFIX}{channel}")
}

pub fn backlog_key(channel: &str) -> String {
    format!("{BACKLOG_PREFIX}{channel}")
}

/// The publish script (§4.2.3).
///
/// KEYS: global id counter, channel id counter, channel backlog, global backlog.
/// ARGV: `<escaped channel>|<data>`, age, channel size, global size,
/// clear_every, pub/sub channel, encoded channel (unescaped).
/// Returns the channel message id.
pub const PUBLISH_SCRIPT: &str = r#"
local global_id = redis.call("INCR", KEYS[1])
local backlog_id = redis.call("INCR", KEYS[2])
local payload = string.format("%d|%d|", global_id, backlog_id) .. ARGV[1]
local max_backlog_age = ARGV[2]
local max_backlog_size = tonumber(ARGV[3])
local max_global_backlog_size = tonumber(ARGV[4])
local clear_every = tonumber(ARGV[5])

redis.call("ZADD", KEYS[3], backlog_id, payload)
redis.call("EXPIRE", KEYS[3], max_backlog_age)
redis.call("ZADD", KEYS[4], global_id, string.format("%d|", backlog_id) .. ARGV[7])
redis.call("EXPIRE", KEYS[4], max_backlog_age)
redis.call("PUBLISH", ARGV[6], payload)
redis.call("EXPIRE", KEYS[2], max_backlog_age)

if backlog_id > max_backlog_size and backlog_id % clear_every == 0 then
  redis.call("ZREMRANGEBYSCORE", KEYS[3], 1, backlog_id - max_backlog_size)
end

if global_id > max_global_backlog_size and global_id % clear_every == 0 then
  redis.call("ZREMRANGEBYSCORE", KEYS[4], 1, global_id - max_global_backlog_size)
end

return backlog_id
"#;

/// Reads the epoch, creating it with ARGV[1] if missing (KEYS[1]: the key).
pub const EPOCH_SCRIPT: &str = r#"
local epoch = redis.call("GET", KEYS[1])
if epoch then
  return epoch
end
redis.call("SET", KEYS[1], ARGV[1])
return ARGV[1]
"#;

/// Splits a global backlog member `<message id>|<encoded channel>` at the
/// first `|` (the channel is not escaped and may contain more `|`).
pub fn parse_global_member(member: &str) -> Option<(i64, &str)> {
    let (id, channel) = member.split_once('|')?;
    let id: i64 = id.parse().ok()?;
    Some((id, channel))
}

/// The URL with any password replaced by `***`, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    redact_query(&redact_userinfo(url))
}

/// `pass=`/`password=` query parameters (unix socket URLs) become `***`.
fn redact_query(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _)) if name == "pass" || name == "password" => format!("{name}=***"),
            _ => param.to_string(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let redacted = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if userinfo.is_empty() => String::new(),
        // `redis://secret@host` : a lone userinfo is the password for Redis URLs.
        None => "***".to_string(),
    };
    format!("{}{}@{}", &url[..rest_start], redacted, &rest[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_follow_the_reference() {
        assert_eq!(backlog_id_key("/foo$|$s1"), "__mb_backlog_id_n_/foo$|$s1");
        assert_eq!(backlog_key("/foo|bar"), "__mb_backlog_n_/foo|bar");
    }

    #[test]
    fn global_members_split_at_the_first_pipe() {
        assert_eq!(parse_global_member("1|/foo"), Some((1, "/foo")));
        assert_eq!(parse_global_member("12|/foo|bar"), Some((12, "/foo|bar")));
        assert_eq!(parse_global_member("3|/foo$|$s1"), Some((3, "/foo$|$s1")));
        assert_eq!(parse_global_member("3|"), Some((3, "")));
        assert_eq!(parse_global_member("nopipe"), None);
        assert_eq!(parse_global_member("x|/foo"), None);
        assert_eq!(parse_global_member("|/foo"), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://:secret@localhost:6379/2"),
            "redis://:***@localhost:6379/2"
        );
        assert_eq!(
            redact_url("redis://user:pa@ss@host/0"),
            "redis://user:***@host/0"
        );
        assert_eq!(redact_url("redis://secret@host"), "redis://***@host");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("unix:///tmp/redis.sock?db=1"),
            "unix:///tmp/redis.sock?db=1"
        );
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("redis+unix:///tmp/r.sock?db=3&pass=secret"),
            "redis+unix:///tmp/r.sock?db=3&pass=***"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// Any member read from `__mb_global_backlog_n`: never a panic; a
            /// parse means an integer before the first pipe.
            #[test]
            fn global_member_never_panics(member in "\\PC*") {
                if let Some((id, channel)) = parse_global_member(&member) {
                    prop_assert_eq!(format!("{}|{}", member.split_once('|').unwrap().0, channel), member.clone());
                    prop_assert_eq!(member.split_once('|').unwrap().0.parse::<i64>().ok(), Some(id));
                }
            }

            /// What the publish script writes (`<message id>|<encoded channel>`)
            /// comes back exactly, whatever the channel contains.
            #[test]
            fn global_member_round_trip(id in any::<i64>(), channel in "\\PC*") {
                let member = format!("{id}|{channel}");
                prop_assert_eq!(parse_global_member(&member), Some((id, channel.as_str())));
            }

            /// Key names are the prefix and the channel verbatim: two different
            /// channels never share a key.
            #[test]
            fn keys_are_injective(a in "\\PC*", b in "\\PC*") {
                prop_assert_eq!(backlog_key(&a) == backlog_key(&b), a == b);
                prop_assert_eq!(backlog_id_key(&a) == backlog_id_key(&b), a == b);
                prop_assert_ne!(backlog_key(&a), backlog_id_key(&b));
            }

            #[test]
            fn redaction_never_panics(url in "\\PC*") {
                let _ = redact_url(&url);
            }
        }
    }
}

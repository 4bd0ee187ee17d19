//! Backend join hooks of the Phoenix front-end (docs/phoenix.md, "Join
//! hooks"): `[[phoenix_join_hooks]]` tables, each a topic pattern and the
//! URL a join to a matching topic is `POST`ed to.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// One `[[phoenix_join_hooks]]` table.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct JoinHookFile {
    /// `*`, `prefix*` or an exact topic.
    pub pattern: String,
    pub url: String,
    /// How long the backend may take [default: 5000].
    pub timeout_ms: Option<u64>,
}

/// A resolved join hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinHook {
    pub pattern: String,
    pub url: String,
    pub timeout: Duration,
}

impl JoinHook {
    fn matches(&self, topic: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => self.pattern == topic,
        }
    }
}

/// The tables, checked: patterns with `*` only at the end, `http` URLs,
/// timeouts from 10 ms to 60 s.
pub fn resolve(file: &[JoinHookFile]) -> Result<Vec<JoinHook>, ConfigError> {
    file.iter()
        .map(|h| {
            let bad = |what: &str| {
                ConfigError::Invalid(format!("phoenix_join_hooks {:?}: {what}", h.pattern))
            };
            let head = h.pattern.strip_suffix('*').unwrap_or(&h.pattern);
            if h.pattern.is_empty() || head.contains('*') {
                return Err(bad("a pattern is `*`, `prefix*` or a topic"));
            }
            if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                return Err(bad("url must be http:// or https://"));
            }
            let ms = h.timeout_ms.unwrap_or(5_000);
            if !(10..=60_000).contains(&ms) {
                return Err(bad("timeout_ms must be between 10 and 60000"));
            }
            Ok(JoinHook {
                pattern: h.pattern.clone(),
                url: h.url.clone(),
                timeout: Duration::from_millis(ms),
            })
        })
        .collect()
}

/// The first hook whose pattern matches `topic`.
pub fn hook_for<'a>(hooks: &'a [JoinHook], topic: &str) -> Option<&'a JoinHook> {
    hooks.iter().find(|h| h.matches(topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(pattern: &str, url: &str, timeout_ms: Option<u64>) -> JoinHookFile {
        JoinHookFile {
            pattern: pattern.into(),
            url: url.into(),
            timeout_ms,
        }
    }

    #[test]
    fn hooks_match_in_order_and_bad_tables_are_refused() {
        let hooks = resolve(&[
            file("room:*", "http://a/join", None),
            file("lobby", "http://b/join", Some(100)),
        ])
        .unwrap();
        assert_eq!(hook_for(&hooks, "room:1").unwrap().url, "http://a/join");
        assert_eq!(hooks[0].timeout, Duration::from_secs(5));
        assert_eq!(
            hook_for(&hooks, "lobby").unwrap().timeout,
            Duration::from_millis(100)
        );
        assert!(hook_for(&hooks, "lobby:2").is_none());
        assert!(resolve(&[file("a*b", "http://a", None)]).is_err());
        assert!(resolve(&[file("a", "ftp://a", None)]).is_err());
        assert!(resolve(&[file("a", "http://a", Some(0))]).is_err());
    }
}

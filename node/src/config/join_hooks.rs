//! Channel rules of the Phoenix and chain front-ends (docs/phoenix.md,
//! "Join hooks" and "Event rules"): `[[phoenix_join_hooks]]` tables, each a
//! topic pattern and the URL a join to a matching topic is `POST`ed to, and
//! `[[channel_events]]` tables, each a topic and event pattern and what a
//! client's push of a matching event does.

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

/// `*`, `prefix*` or an exact name.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// A pattern with `*` only at its end.
fn valid_pattern(pattern: &str) -> bool {
    let head = pattern.strip_suffix('*').unwrap_or(pattern);
    !pattern.is_empty() && !head.contains('*')
}

/// A backend URL and timeout, checked: `http(s)` URLs, 10 ms to 60 s.
fn backend(url: &str, timeout_ms: Option<u64>) -> Result<Duration, &'static str> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("url must be http:// or https://");
    }
    let ms = timeout_ms.unwrap_or(5_000);
    if !(10..=60_000).contains(&ms) {
        return Err("timeout_ms must be between 10 and 60000");
    }
    Ok(Duration::from_millis(ms))
}

/// The tables, checked: patterns with `*` only at the end, `http` URLs,
/// timeouts from 10 ms to 60 s.
pub fn resolve(file: &[JoinHookFile]) -> Result<Vec<JoinHook>, ConfigError> {
    file.iter()
        .map(|h| {
            let bad = |what: &str| {
                ConfigError::Invalid(format!("phoenix_join_hooks {:?}: {what}", h.pattern))
            };
            if !valid_pattern(&h.pattern) {
                return Err(bad("a pattern is `*`, `prefix*` or a topic"));
            }
            Ok(JoinHook {
                pattern: h.pattern.clone(),
                url: h.url.clone(),
                timeout: backend(&h.url, h.timeout_ms).map_err(bad)?,
            })
        })
        .collect()
}

/// The first hook whose pattern matches `topic`.
pub fn hook_for<'a>(hooks: &'a [JoinHook], topic: &str) -> Option<&'a JoinHook> {
    hooks.iter().find(|h| matches(&h.pattern, topic))
}

/// What a client's push of an event does.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Publish it to the topic (the default for events no table names).
    Broadcast,
    /// `POST` it to the table's `url`; the answer is the push's reply.
    Forward,
    /// Refuse it (`event_refused`).
    Refuse,
}

/// One `[[channel_events]]` table.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct EventRuleFile {
    /// Topics: `*`, `prefix*` or an exact topic.
    pub pattern: String,
    /// Events: `*`, `prefix*` or an exact event name.
    pub event: String,
    pub action: Action,
    /// The backend of `forward` (only there).
    pub url: Option<String>,
    /// How long the backend may take [default: 5000].
    pub timeout_ms: Option<u64>,
}

/// A resolved event rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRule {
    pub pattern: String,
    pub event: String,
    pub action: Action,
    /// `forward`: the backend and its timeout.
    pub backend: Option<(String, Duration)>,
}

/// The `[[channel_events]]` tables, checked: patterns as for join hooks,
/// `url` exactly for `forward`.
pub fn resolve_events(file: &[EventRuleFile]) -> Result<Vec<EventRule>, ConfigError> {
    file.iter()
        .map(|r| {
            let bad = |what: &str| {
                ConfigError::Invalid(format!(
                    "channel_events {:?} {:?}: {what}",
                    r.pattern, r.event
                ))
            };
            if !valid_pattern(&r.pattern) || !valid_pattern(&r.event) {
                return Err(bad("patterns are `*`, `prefix*` or a name"));
            }
            let backend = match (r.action, &r.url) {
                (Action::Forward, Some(url)) => {
                    Some((url.clone(), backend(url, r.timeout_ms).map_err(bad)?))
                }
                (Action::Forward, None) => return Err(bad("forward needs a url")),
                (_, Some(_)) => return Err(bad("only forward takes a url")),
                (_, None) if r.timeout_ms.is_some() => {
                    return Err(bad("only forward takes a timeout_ms"))
                }
                (_, None) => None,
            };
            Ok(EventRule {
                pattern: r.pattern.clone(),
                event: r.event.clone(),
                action: r.action,
                backend,
            })
        })
        .collect()
}

/// The first rule matching `topic` and `event`.
pub fn event_rule_for<'a>(
    rules: &'a [EventRule],
    topic: &str,
    event: &str,
) -> Option<&'a EventRule> {
    rules
        .iter()
        .find(|r| matches(&r.pattern, topic) && matches(&r.event, event))
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

    fn rule(event: &str, action: Action, url: Option<&str>) -> EventRuleFile {
        EventRuleFile {
            pattern: "room:*".into(),
            event: event.into(),
            action,
            url: url.map(str::to_string),
            timeout_ms: None,
        }
    }

    #[test]
    fn event_rules_match_topic_and_event_in_order() {
        let rules = resolve_events(&[
            rule("ask", Action::Forward, Some("http://b/ask")),
            rule("admin_*", Action::Refuse, None),
            rule("*", Action::Broadcast, None),
        ])
        .unwrap();
        let action = |t: &str, e: &str| event_rule_for(&rules, t, e).map(|r| r.action);
        assert_eq!(action("room:1", "ask"), Some(Action::Forward));
        assert_eq!(
            rules[0].backend,
            Some(("http://b/ask".into(), Duration::from_secs(5)))
        );
        assert_eq!(action("room:1", "admin_kick"), Some(Action::Refuse));
        assert_eq!(action("room:1", "shout"), Some(Action::Broadcast));
        assert_eq!(action("lobby", "ask"), None);
        assert!(resolve_events(&[rule("ask", Action::Forward, None)]).is_err());
        assert!(resolve_events(&[rule("ask", Action::Refuse, Some("http://b"))]).is_err());
        assert!(resolve_events(&[rule("a*b", Action::Refuse, None)]).is_err());
    }
}

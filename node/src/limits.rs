//! Process limits: every socket is a file, so the open-file limit caps connections.

/// Raise the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_open_files() -> u64 {
    #[cfg(unix)]
    {
        match rlimit::Resource::NOFILE.get() {
            Ok((soft, hard)) => {
                if soft < hard {
                    if let Err(e) = rlimit::Resource::NOFILE.set(hard, hard) {
                        tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
                        return soft;
                    }
                }
                hard
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the open-file limit");
                0
            }
        }
    }
    #[cfg(not(unix))]
    {
        0
    }
}

/// Below this, a node cannot hold a useful number of connections.
pub const LOW_OPEN_FILES: u64 = 4096;

/// Longest channel, user or client id accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// How many distinct ids one frame or API call may name when
/// `--max-ids-per-message` is not given.
pub const DEFAULT_MAX_IDS_PER_MESSAGE: usize = 100;

/// The id list of one frame or API call (`channel_ids`, `root_ids`,
/// `client_ids`), checked: not empty, every id 1 to [`MAX_ID_LEN`] bytes (a
/// valid [`channel_name`] when `field` is `channel_ids`, a client id of the
/// form `{unix seconds}:{32 hex}:{node id}` when it is `client_ids`), duplicates dropped
/// keeping the first occurrence's place, and at most `max` distinct ids.
///
/// Repeating an id therefore costs nothing: one frame that lists a channel a
/// thousand times publishes (and appends to its history) once.
pub fn id_list(ids: Vec<String>, field: &str, max: usize) -> Result<Vec<String>, String> {
    if ids.is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    let channels = field == "channel_ids";
    let clients = field == "client_ids";
    let check = |id: &str| {
        if channels {
            channel_name(id).map_err(|e| format!("{field}: {e}"))?;
        } else if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(format!(
                "every id in {field} must be 1 to {MAX_ID_LEN} bytes"
            ));
        } else if clients && !pubmesh_cluster_proto::valid_client_id(id) {
            return Err(format!(
                "{field}: {} is not a client id ({{unix seconds}}:{{32 hex}}:{{node id}})",
                serde_json::to_string(id).expect("strings serialize")
            ));
        }
        Ok(())
    };
    let too_many =
        || format!("{field} may name at most {max} distinct ids (--max-ids-per-message)");
    // Most lists name one id: the list is returned as it came, with no set
    // and no second list.
    if let [id] = ids.as_slice() {
        check(id)?;
        return if max == 0 { Err(too_many()) } else { Ok(ids) };
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len().min(max + 1));
    let mut out = Vec::with_capacity(ids.len().min(max));
    for id in ids {
        check(&id)?;
        if seen.contains(id.as_str()) {
            continue;
        }
        if out.len() == max {
            return Err(too_many());
        }
        seen.insert(id.clone());
        out.push(id);
    }
    Ok(out)
}

/// Characters no channel name may contain: `{` and `}` (they would change
/// the Redis Cluster hash tag `{name}` that keeps a channel's topic and keys
/// in one slot), control characters, and the invisible direction and
/// separator marks that make one name look like another.
pub fn forbidden_in_channel(c: char) -> bool {
    matches!(c,
        '{' | '}'
        // C0, DEL and C1 controls
        | '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        // Arabic letter mark, left-to-right and right-to-left marks
        | '\u{61c}' | '\u{200e}' | '\u{200f}'
        // line and paragraph separators
        | '\u{2028}' | '\u{2029}'
        // bidi embeddings and overrides (LRE, RLE, PDF, LRO, RLO)
        | '\u{202a}'..='\u{202e}'
        // bidi isolates (LRI, RLI, FSI, PDI)
        | '\u{2066}'..='\u{2069}'
        // byte order mark / zero-width no-break space
        | '\u{feff}')
}

/// A channel name is 1 to [`MAX_ID_LEN`] bytes of UTF-8 with none of the
/// characters of [`forbidden_in_channel`] (docs/protocol.md, "Channel names").
pub fn channel_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_ID_LEN {
        return Err(format!("a channel name must be 1 to {MAX_ID_LEN} bytes"));
    }
    if let Some(c) = name.chars().find(|&c| forbidden_in_channel(c)) {
        return Err(format!(
            "a channel name may not contain U+{:04X} (braces, control characters and bidi marks are refused)",
            c as u32
        ));
    }
    Ok(())
}

/// Longest event name (Phoenix binary frames carry its size in one byte).
pub const MAX_EVENT_LEN: usize = 255;

/// An event name (`POST /api/notify/channels`'s `event`, a Phoenix push):
/// 1 to [`MAX_EVENT_LEN`] bytes, no commas or control characters, and not
/// one of the protocol's own `phx_` events.
pub fn event_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_EVENT_LEN {
        return Err(format!("an event name must be 1 to {MAX_EVENT_LEN} bytes"));
    }
    if name.chars().any(|c| c == ',' || c.is_control()) {
        return Err("an event name may not contain commas or control characters".into());
    }
    if name.starts_with("phx_") {
        return Err("event names starting with phx_ are the protocol's own".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn duplicates_are_dropped_keeping_first_places() {
        let ids = strings(&["b", "a", "b", "c", "a", "b"]);
        assert_eq!(
            id_list(ids, "root_ids", 3).unwrap(),
            strings(&["b", "a", "c"])
        );
        let many = vec!["x".to_string(); 16_364];
        assert_eq!(id_list(many, "channel_ids", 1).unwrap(), strings(&["x"]));
    }

    #[test]
    fn a_list_of_one_valid_id_is_returned_as_it_came() {
        let ids = strings(&["news"]);
        let at = ids.as_ptr();
        let out = id_list(ids, "channel_ids", 5).unwrap();
        assert_eq!(out, strings(&["news"]));
        assert_eq!(out.as_ptr(), at, "a second list was built");
        assert!(id_list(strings(&["{news}"]), "channel_ids", 5).is_err());
        assert!(id_list(strings(&["news"]), "channel_ids", 0).is_err());
    }

    #[test]
    fn more_distinct_ids_than_the_cap_are_refused() {
        let ids: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
        let err = id_list(ids.clone(), "channel_ids", 100).unwrap_err();
        assert!(err.contains("at most 100"), "{err}");
        assert_eq!(id_list(ids, "channel_ids", 101).unwrap().len(), 101);
        assert!(id_list(Vec::new(), "client_ids", 5).is_err());
        assert!(id_list(strings(&[""]), "client_ids", 5).is_err());
        assert!(id_list(vec!["u".repeat(257)], "root_ids", 5).is_err());
    }

    #[test]
    fn channel_names_refuse_braces_controls_and_bidi_marks() {
        for bad in [
            "",
            "a{b",
            "}",
            "{x}",
            "tab\there",
            "nul\0",
            "del\u{7f}",
            "c1\u{85}",
            "rlo\u{202e}gnp.exe",
            "lri\u{2066}",
            "pdi\u{2069}",
            "lrm\u{200e}",
            "alm\u{61c}",
            "ls\u{2028}",
            "bom\u{feff}",
        ] {
            assert!(channel_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(channel_name(&"c".repeat(257)).is_err());
        for good in [
            "room-1",
            "chat:lobby",
            "1730887348:796ad2e9fa3e484ebe01f071c381b7e8",
            "h:x/y.z",
            "with space",
            "ünïcødé",
            "日本語",
            "emoji😀",
            "a*b",
        ] {
            assert!(channel_name(good).is_ok(), "{good:?} refused");
        }
        assert!(channel_name(&"c".repeat(256)).is_ok());
        // Other id lists keep any non-empty string (user ids are opaque).
        assert!(id_list(strings(&["{u}"]), "root_ids", 5).is_ok());
        assert!(id_list(strings(&["{u}"]), "channel_ids", 5).is_err());
    }

    #[test]
    fn client_ids_must_have_the_form_nodes_give_them() {
        let good = "1730887348:f46d85203c704c099e9f44e948322a20:n1";
        assert!(id_list(strings(&[good]), "client_ids", 5).is_ok());
        for bad in [
            "x",
            "a:b:n1",
            "1730887348:f46d85203c704c099e9f44e948322a20:",
        ] {
            let err = id_list(strings(&[good, bad]), "client_ids", 5).unwrap_err();
            assert!(err.contains("is not a client id"), "{bad:?}: {err}");
        }
        // The same string is a fine user id.
        assert!(id_list(strings(&["x"]), "root_ids", 5).is_ok());
    }
}

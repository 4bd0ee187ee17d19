//! Any config file text either fails with an error or gives a configuration
//! that keeps the invariants the node relies on.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pubmesh_node::config::{valid_node_id, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_toml(text) {
        assert!(config.max_message_size > 0);
        assert!(config.outbox_bytes >= config.max_message_size);
        assert!(config.max_ids_per_message > 0);
        assert!(config.client_rate > 0 && config.client_burst > 0);
        assert!(valid_node_id(&config.node_id));
        assert!(!config.api_key.is_empty());
    }
});

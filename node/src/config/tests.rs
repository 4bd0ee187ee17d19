use super::*;
use clap::Parser;

#[test]
fn flags_win_over_file_and_defaults_fill_the_rest() {
    let cli = Cli::try_parse_from(["pubmesh", "--node-id", "a1", "--drain-seconds", "3"])
        .expect("parses");
    let file: FileConfig =
        toml::from_str("node_id = \"from-file\"\nclient_rate = 7\nclient_user_publish = \"any\"\n")
            .expect("toml");
    let config = Config::resolve(cli, file).expect("valid");
    assert_eq!(config.node_id, "a1");
    assert_eq!(config.drain, Duration::from_secs(3));
    assert_eq!(config.client_rate, 7);
    assert_eq!(config.client_user_publish, DirectPublish::Any);
    assert_eq!(config.client_channel_publish, ChannelPublish::Members);
    assert!(config.api_key_generated);
}

#[test]
fn settings_that_need_a_token_key_are_refused_without_one() {
    let cli = Cli::try_parse_from(["pubmesh", "--require-auth"]).expect("parses");
    let err = Config::resolve(cli, FileConfig::default()).unwrap_err();
    assert!(err.to_string().contains("--require-auth needs"), "{err}");
    let file: FileConfig =
        toml::from_str("[[namespaces]]\npattern = \"private:*\"\nsubscribe = \"claim\"\n")
            .expect("toml");
    let err = Config::resolve(Cli::default(), file).unwrap_err();
    assert!(err.to_string().contains("private:*"), "{err}");
    let cli =
        Cli::try_parse_from(["pubmesh", "--require-auth", "--jwt-secret", "s"]).expect("parses");
    assert!(Config::resolve(cli, FileConfig::default()).is_ok());
}

#[test]
fn boolean_flags_accept_one_and_zero() {
    for (value, expected) in [("1", true), ("0", false), ("true", true), ("false", false)] {
        let cli = Cli::try_parse_from(["pubmesh", "--redis-cluster", value]).expect(value);
        assert_eq!(cli.redis_cluster, Some(expected), "{value}");
    }
}

#[test]
fn unknown_file_keys_are_rejected() {
    let err = toml::from_str::<FileConfig>("listn = \"1.2.3.4:5\"").unwrap_err();
    assert!(err.to_string().contains("listn"), "{err}");
}

#[test]
fn bad_values_are_rejected_with_a_message() {
    let cli = Cli::try_parse_from(["pubmesh", "--node-id", "bad id"]).expect("parses");
    let err = Config::resolve(cli, FileConfig::default()).unwrap_err();
    assert!(err.to_string().contains("node id"), "{err}");
    let cli = Cli::try_parse_from(["pubmesh", "--redis-url", "http://x"]).expect("parses");
    assert!(Config::resolve(cli, FileConfig::default()).is_err());
}

#[test]
fn batching_waits_default_to_a_millisecond_turn_off_and_are_bounded() {
    let d = Config::resolve(Cli::default(), FileConfig::default()).expect("valid");
    assert_eq!(d.flush_window, Duration::from_millis(1));
    assert_eq!(d.relay.batch_wait, Duration::from_millis(1));
    assert_eq!(d.relay.interest_wait, Duration::from_millis(1));
    let cli = Cli::try_parse_from([
        "pubmesh",
        "--flush-window-us",
        "0",
        "--relay-batch-us",
        "0",
        "--relay-interest-us",
        "0",
    ])
    .expect("parses");
    let off = Config::resolve(cli, FileConfig::default()).expect("valid");
    assert_eq!(off.flush_window, Duration::ZERO);
    assert_eq!(off.relay.batch_wait, Duration::ZERO);
    assert_eq!(off.relay.interest_wait, Duration::ZERO);
    for flag in [
        "--flush-window-us",
        "--relay-batch-us",
        "--relay-interest-us",
    ] {
        let cli = Cli::try_parse_from(["pubmesh", flag, "100001"]).expect("parses");
        let err = Config::resolve(cli, FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("at most 100000"), "{flag}: {err}");
    }
}

#[test]
fn connection_deadlines_default_resolve_and_turn_off() {
    let d = Config::defaults().connections;
    assert_eq!(d, Connections::default());
    assert_eq!(d.header_timeout, Duration::from_secs(10));
    assert_eq!(d.handshake_timeout, Duration::from_secs(10));
    assert_eq!(d.max_admin_connections, 128);
    let ping = d.liveness.expect("pings on by default");
    assert_eq!(
        (ping.interval, ping.timeout),
        (Duration::from_secs(25), Duration::from_secs(10))
    );
    assert_eq!(ping.bound(), Duration::from_secs(35));
    assert_eq!(d.tcp_keepalive, Some(Duration::from_secs(30)));

    let cli = Cli::try_parse_from([
        "pubmesh",
        "--ping-interval-seconds",
        "2",
        "--header-timeout-seconds",
        "4",
    ])
    .expect("parses");
    let file: FileConfig = toml::from_str(
        "ping_interval_seconds = 9\npong_timeout_seconds = 3\ntcp_keepalive_seconds = 0\nmax_admin_connections = 7\n",
    )
    .expect("toml");
    let c = Config::resolve(cli, file).expect("valid").connections;
    assert_eq!(
        c.liveness,
        Some(Liveness {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(3)
        })
    );
    assert_eq!(c.header_timeout, Duration::from_secs(4));
    assert_eq!(c.tcp_keepalive, None, "0 turns keepalive off");
    assert_eq!(c.max_admin_connections, 7);

    let cli = Cli::try_parse_from(["pubmesh", "--ping-interval-seconds", "0"]).expect("parses");
    let c = Config::resolve(cli, FileConfig::default()).expect("valid");
    assert_eq!(c.connections.liveness, None, "0 turns pings off");

    for flag in [
        "--header-timeout-seconds",
        "--handshake-timeout-seconds",
        "--pong-timeout-seconds",
        "--max-admin-connections",
    ] {
        let cli = Cli::try_parse_from(["pubmesh", flag, "0"]).expect("parses");
        let err = Config::resolve(cli, FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("must be > 0"), "{flag}: {err}");
    }
    let cli =
        Cli::try_parse_from(["pubmesh", "--pong-timeout-seconds", "99999999999"]).expect("parses");
    assert!(Config::resolve(cli, FileConfig::default()).is_err());
}

#[test]
fn channels_named_for_their_node_go_to_its_inbox_unless_turned_off() {
    let d = Config::resolve(Cli::default(), FileConfig::default()).expect("valid");
    assert!(d.relay.owned_channels);
    let cli = Cli::try_parse_from(["pubmesh", "--relay-owned-channels", "false"]).expect("parses");
    assert!(
        !Config::resolve(cli, FileConfig::default())
            .expect("valid")
            .relay
            .owned_channels
    );
    let file = || toml::from_str::<FileConfig>("relay_owned_channels = false\n").expect("toml");
    assert!(
        !Config::resolve(Cli::default(), file())
            .expect("valid")
            .relay
            .owned_channels
    );
    let cli = Cli::try_parse_from(["pubmesh", "--relay-owned-channels"]).expect("parses");
    assert!(
        Config::resolve(cli, file())
            .expect("valid")
            .relay
            .owned_channels
    );
}

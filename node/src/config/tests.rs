use super::*;

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

//! Budgets per client address (docs/protocol.md, "Limits"): how many
//! connections one address may open per second and how many frames all its
//! sockets together may send, so that reconnecting does not reset either;
//! which networks are exempt; how many addresses a node remembers.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{ConfigError, FileConfig};

/// Environment variable names of these flags.
pub mod env {
    pub const ADDRESS_CONNECTION_RATE: &str = "PUBMESH_ADDRESS_CONNECTION_RATE";
    pub const ADDRESS_CONNECTION_BURST: &str = "PUBMESH_ADDRESS_CONNECTION_BURST";
    pub const ADDRESS_FRAME_RATE: &str = "PUBMESH_ADDRESS_FRAME_RATE";
    pub const ADDRESS_FRAME_BURST: &str = "PUBMESH_ADDRESS_FRAME_BURST";
    pub const ADDRESS_IPV4_PREFIX: &str = "PUBMESH_ADDRESS_IPV4_PREFIX";
    pub const ADDRESS_IPV6_PREFIX: &str = "PUBMESH_ADDRESS_IPV6_PREFIX";
    pub const ADDRESS_TABLE_ENTRIES: &str = "PUBMESH_ADDRESS_TABLE_ENTRIES";
    pub const TRUSTED_NETWORKS: &str = "PUBMESH_TRUSTED_NETWORKS";
}

/// The flags (flattened into [`super::Cli`]).
#[derive(clap::Args, Debug, Default)]
pub struct AddressCli {
    /// Connections per second one client address may open (token bucket rate); beyond, the connection is answered 429 and closed; 0 turns the bound off [default: 10]
    #[arg(long, env = env::ADDRESS_CONNECTION_RATE)]
    pub address_connection_rate: Option<u32>,
    /// Token bucket size for --address-connection-rate [default: 100]
    #[arg(long, env = env::ADDRESS_CONNECTION_BURST)]
    pub address_connection_burst: Option<u32>,
    /// Frames per second all WebSockets of one client address may send together (pings and pongs count); a socket whose frame finds the budget empty is closed with 4029; 0 turns the bound off [default: 500]
    #[arg(long, env = env::ADDRESS_FRAME_RATE)]
    pub address_frame_rate: Option<u32>,
    /// Token bucket size for --address-frame-rate [default: 1000]
    #[arg(long, env = env::ADDRESS_FRAME_BURST)]
    pub address_frame_burst: Option<u32>,
    /// IPv4 addresses that share one budget: the length of their common prefix [default: 32]
    #[arg(long, env = env::ADDRESS_IPV4_PREFIX)]
    pub address_ipv4_prefix: Option<u8>,
    /// IPv6 addresses that share one budget: the length of their common prefix (a /64 is usually one subscriber) [default: 64]
    #[arg(long, env = env::ADDRESS_IPV6_PREFIX)]
    pub address_ipv6_prefix: Option<u8>,
    /// Client addresses a node remembers budgets for (about 200 bytes each); beyond, the least recently seen is forgotten [default: 65536]
    #[arg(long, env = env::ADDRESS_TABLE_ENTRIES)]
    pub address_table_entries: Option<usize>,
    /// Networks (CIDR, comma-separated) exempt from the per-address budgets, e.g. a reverse proxy or load generators; "none" for none [default: loopback and private: 127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7]
    #[arg(long, env = env::TRUSTED_NETWORKS, value_delimiter = ',')]
    pub trusted_networks: Vec<String>,
}

/// A token bucket's settings: `rate` per second, at most `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub rate: u32,
    pub burst: u32,
}

/// The resolved settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressLimits {
    /// New connections per address (`None`: not bounded).
    pub connections: Option<Rate>,
    /// Frames per address, all its sockets together (`None`: not bounded).
    pub frames: Option<Rate>,
    /// Prefix lengths that make one address: IPv4, IPv6.
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Addresses remembered at most.
    pub table_entries: usize,
    /// Peers in these networks have no per-address budget.
    pub trusted: Vec<IpNet>,
}

impl Default for AddressLimits {
    fn default() -> Self {
        AddressLimits {
            connections: Some(Rate {
                rate: 10,
                burst: 100,
            }),
            frames: Some(Rate {
                rate: 500,
                burst: 1000,
            }),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            table_entries: 65_536,
            trusted: default_trusted(),
        }
    }
}

/// Loopback and private networks: local tools and load generators, and
/// the reverse proxies, ingress controllers and load balancers (with source
/// NAT) that speak for many clients from a private address.
pub const DEFAULT_TRUSTED: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
];

fn default_trusted() -> Vec<IpNet> {
    DEFAULT_TRUSTED
        .iter()
        .map(|n| n.parse().expect("valid network"))
        .collect()
}

impl AddressLimits {
    /// Is `ip` in a trusted network?
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Flags first, then the file, then the defaults.
    pub(super) fn resolve(cli: &AddressCli, file: &FileConfig) -> Result<Self, ConfigError> {
        let d = AddressLimits::default();
        let bucket = |name: &str,
                      rate: Option<u32>,
                      burst: Option<u32>,
                      default: Option<Rate>|
         -> Result<Option<Rate>, ConfigError> {
            let default = default.expect("defaults are on");
            let rate = rate.unwrap_or(default.rate);
            let burst = burst.unwrap_or(default.burst);
            if rate == 0 {
                return Ok(None);
            }
            if burst == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{name}_burst must be > 0 (turn the bound off with {name}_rate = 0)"
                )));
            }
            Ok(Some(Rate { rate, burst }))
        };
        let connections = bucket(
            "address_connection",
            cli.address_connection_rate.or(file.address_connection_rate),
            cli.address_connection_burst
                .or(file.address_connection_burst),
            d.connections,
        )?;
        let frames = bucket(
            "address_frame",
            cli.address_frame_rate.or(file.address_frame_rate),
            cli.address_frame_burst.or(file.address_frame_burst),
            d.frames,
        )?;
        let ipv4_prefix = cli
            .address_ipv4_prefix
            .or(file.address_ipv4_prefix)
            .unwrap_or(d.ipv4_prefix);
        let ipv6_prefix = cli
            .address_ipv6_prefix
            .or(file.address_ipv6_prefix)
            .unwrap_or(d.ipv6_prefix);
        if !(1..=32).contains(&ipv4_prefix) || !(1..=128).contains(&ipv6_prefix) {
            return Err(ConfigError::Invalid(
                "address_ipv4_prefix must be 1 to 32 and address_ipv6_prefix 1 to 128".into(),
            ));
        }
        let table_entries = cli
            .address_table_entries
            .or(file.address_table_entries)
            .unwrap_or(d.table_entries);
        if table_entries < 64 {
            return Err(ConfigError::Invalid(
                "address_table_entries must be at least 64".into(),
            ));
        }
        let listed = if cli.trusted_networks.is_empty() {
            file.trusted_networks.clone()
        } else {
            Some(cli.trusted_networks.clone())
        };
        let trusted = match listed {
            None => d.trusted,
            Some(list) => parse_networks(&list)?,
        };
        Ok(AddressLimits {
            connections,
            frames,
            ipv4_prefix,
            ipv6_prefix,
            table_entries,
            trusted,
        })
    }
}

/// CIDR networks (a bare address is a network of one); empty items and
/// `none` are skipped, so `""` or `none` trusts no network.
fn parse_networks(list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    let mut out = Vec::new();
    for item in list.iter().map(|s| s.trim()) {
        if item.is_empty() || item.eq_ignore_ascii_case("none") {
            continue;
        }
        let net = match item.parse::<IpNet>() {
            Ok(net) => net.trunc(),
            Err(_) => match item.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(ConfigError::Invalid(format!(
                        "trusted_networks: {item:?} is not a network (CIDR such as 10.0.0.0/8 or fd00::/8) or an address"
                    )))
                }
            },
        };
        out.push(net);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Config};
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_then_file_then_defaults() {
        assert_eq!(Config::defaults().addresses, AddressLimits::default());
        let cli = Cli::try_parse_from([
            "pubmesh",
            "--address-frame-rate",
            "7",
            "--trusted-networks",
            "10.0.0.0/8,192.168.1.7, fd00::/8",
        ])
        .expect("parses");
        let file: FileConfig = toml::from_str(
            "address_frame_burst = 9\naddress_connection_rate = 0\naddress_ipv6_prefix = 48\n\
             trusted_networks = [\"172.16.0.0/12\"]\naddress_table_entries = 1000\n",
        )
        .expect("toml");
        let limits = AddressLimits::resolve(&cli.addresses, &file).expect("valid");
        assert_eq!(limits.frames, Some(Rate { rate: 7, burst: 9 }));
        assert_eq!(limits.connections, None);
        assert_eq!(limits.ipv6_prefix, 48);
        assert_eq!(limits.table_entries, 1000);
        assert!(limits.is_trusted("10.1.2.3".parse().unwrap()));
        assert!(limits.is_trusted("192.168.1.7".parse().unwrap()));
        assert!(!limits.is_trusted("192.168.1.8".parse().unwrap()));
        assert!(limits.is_trusted("fd12::1".parse().unwrap()));
        // The flag replaces the file's list and the default.
        assert!(!limits.is_trusted("172.16.0.1".parse().unwrap()));
        assert!(!limits.is_trusted("127.0.0.1".parse().unwrap()));
        let file_only = AddressLimits::resolve(&AddressCli::default(), &file).expect("valid");
        assert!(file_only.is_trusted("172.16.0.1".parse().unwrap()));
        assert!(!file_only.is_trusted("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn loopback_and_private_networks_are_trusted_by_default_and_none_trusts_nothing() {
        let d = AddressLimits::default();
        for ip in [
            "127.0.0.2",
            "::1",
            "10.1.2.3",
            "172.31.0.1",
            "192.168.0.9",
            "fd00::5",
        ] {
            assert!(d.is_trusted(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "100.64.0.1"] {
            assert!(!d.is_trusted(ip.parse().unwrap()), "{ip}");
        }
        for list in [vec!["none"], vec![""]] {
            let cli = Cli::try_parse_from(
                ["pubmesh", "--trusted-networks"]
                    .into_iter()
                    .chain(list.iter().copied()),
            )
            .expect("parses");
            let limits =
                AddressLimits::resolve(&cli.addresses, &FileConfig::default()).expect("valid");
            assert!(limits.trusted.is_empty(), "{list:?}");
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        for text in [
            "trusted_networks = [\"10.0.0.0/33\"]",
            "trusted_networks = [\"example.com\"]",
            "address_frame_burst = 0",
            "address_connection_burst = 0",
            "address_ipv4_prefix = 0",
            "address_ipv6_prefix = 129",
            "address_table_entries = 10",
        ] {
            let err = Config::from_toml(text).expect_err(text);
            assert!(
                err.to_string().contains("must be") || err.to_string().contains("not a network"),
                "{text}: {err}"
            );
        }
    }
}

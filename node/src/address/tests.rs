use super::*;

fn table(limits: AddressLimits) -> (Arc<Addresses>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new("n1"));
    (Addresses::new(limits, metrics.clone()), metrics)
}

fn untrusted() -> AddressLimits {
    AddressLimits {
        trusted: Vec::new(),
        ..AddressLimits::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn counted(admit: Admit) -> AddressBudget {
    match admit {
        Admit::Counted(budget) => budget,
        other => panic!("expected a counted connection, got {other:?}"),
    }
}

#[test]
fn a_bucket_refills_at_its_rate_up_to_its_burst() {
    let rate = Rate { rate: 10, burst: 3 };
    let t0 = Instant::now();
    let mut b = Bucket::full(rate, t0);
    for _ in 0..3 {
        assert!(b.take(rate, t0).is_ok());
    }
    let wait = b.take(rate, t0).expect_err("empty");
    assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
    // 250 ms give 2.5 tokens: two frames, then empty again.
    let t1 = t0 + Duration::from_millis(250);
    assert!(b.take(rate, t1).is_ok());
    assert!(b.take(rate, t1).is_ok());
    assert!(b.take(rate, t1).is_err());
    // A long pause refills to the burst, not beyond.
    let t2 = t1 + Duration::from_secs(60);
    for _ in 0..3 {
        assert!(b.take(rate, t2).is_ok());
    }
    assert!(b.take(rate, t2).is_err());
}

#[test]
fn reconnecting_does_not_refill_the_connection_budget() {
    let limits = AddressLimits {
        connections: Some(Rate { rate: 1, burst: 5 }),
        ..untrusted()
    };
    let (t, metrics) = table(limits);
    for _ in 0..5 {
        // Each connection is dropped at once, as a reconnecting client's.
        drop(counted(t.admit(ip("198.51.100.7"))));
    }
    assert!(matches!(t.admit(ip("198.51.100.7")), Admit::Refused(_)));
    // Another address has its own budget.
    counted(t.admit(ip("198.51.100.8")));
    assert_eq!(
        metrics
            .address
            .limited
            .with_label_values(&["connection"])
            .get(),
        1
    );
}

#[test]
fn the_sockets_of_one_address_share_one_frame_budget() {
    let limits = AddressLimits {
        connections: None,
        frames: Some(Rate { rate: 1, burst: 10 }),
        ..untrusted()
    };
    let (t, metrics) = table(limits);
    let mut allowed = 0;
    // Ten sockets, each well within its own budget (100 a burst).
    for _ in 0..10 {
        let mut socket = FrameLimit::new(100, 100, Some(counted(t.admit(ip("203.0.113.5")))));
        for _ in 0..5 {
            if socket.allow() {
                allowed += 1;
            } else {
                break;
            }
        }
    }
    // 10 in the burst, plus what refilled at 1/s while the test ran.
    assert!((10..=11).contains(&allowed), "{allowed}");
    assert!(metrics.address.limited.with_label_values(&["frame"]).get() >= 1);
    // A socket's own budget still applies first.
    let mut own = FrameLimit::new(1, 2, None);
    assert!(own.allow() && own.allow() && !own.allow());
}

#[test]
fn ipv6_addresses_share_a_budget_by_prefix() {
    let limits = AddressLimits {
        connections: Some(Rate { rate: 1, burst: 2 }),
        ..untrusted()
    };
    let (t, _) = table(limits);
    counted(t.admit(ip("2001:db8:1:2::1")));
    counted(t.admit(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
    // Same /64: spent.
    assert!(matches!(t.admit(ip("2001:db8:1:2::9")), Admit::Refused(_)));
    // The next /64 is someone else.
    counted(t.admit(ip("2001:db8:1:3::1")));
    // An IPv4-mapped IPv6 peer is its IPv4 address.
    counted(t.admit(ip("::ffff:192.0.2.1")));
    counted(t.admit(ip("192.0.2.1")));
    assert!(matches!(t.admit(ip("::ffff:192.0.2.1")), Admit::Refused(_)));
}

#[test]
fn ipv4_prefix_groups_addresses() {
    let limits = AddressLimits {
        connections: Some(Rate { rate: 1, burst: 1 }),
        ipv4_prefix: 24,
        ..untrusted()
    };
    let (t, _) = table(limits);
    counted(t.admit(ip("192.0.2.1")));
    assert!(matches!(t.admit(ip("192.0.2.200")), Admit::Refused(_)));
    counted(t.admit(ip("192.0.3.1")));
}

#[test]
fn trusted_networks_have_no_budget() {
    let limits = AddressLimits {
        connections: Some(Rate { rate: 1, burst: 1 }),
        trusted: vec!["10.0.0.0/8".parse().expect("net")],
        ..AddressLimits::default()
    };
    let (t, _) = table(limits);
    for _ in 0..100 {
        assert!(matches!(t.admit(ip("10.9.8.7")), Admit::Trusted));
    }
    assert!(t.is_empty());
    counted(t.admit(ip("11.0.0.1")));
    assert!(matches!(t.admit(ip("11.0.0.1")), Admit::Refused(_)));
}

#[test]
fn the_table_stays_bounded_and_counts_what_it_forgets() {
    let limits = AddressLimits {
        table_entries: 64,
        ..untrusted()
    };
    let (t, metrics) = table(limits);
    let n = 10_000u32;
    for i in 0..n {
        let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        counted(t.admit(IpAddr::V4(a)));
        assert!(t.len() <= 64, "{} entries after {i}", t.len());
    }
    let len = t.len() as i64;
    assert!(len > 32, "{len}");
    assert_eq!(metrics.address.entries.get(), len);
    // Every forgotten address had spent a connection token.
    assert_eq!(metrics.address.evicted.get(), n as u64 - len as u64);
    // The same for IPv6 /64s.
    for i in 0..n {
        let a = std::net::Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(i) << 64));
        counted(t.admit(IpAddr::V6(a)));
    }
    assert!(t.len() <= 64);
    assert_eq!(metrics.address.entries.get(), t.len() as i64);
}

#[test]
fn a_forgotten_address_keeps_its_sockets_budget() {
    let limits = AddressLimits {
        table_entries: 64,
        connections: None,
        frames: Some(Rate { rate: 1, burst: 3 }),
        ..untrusted()
    };
    let (t, metrics) = table(limits);
    let mut socket = FrameLimit::new(100, 100, Some(counted(t.admit(ip("198.51.100.1")))));
    assert!(socket.allow());
    // Push it out of the table with many other addresses.
    for i in 0..1000u32 {
        counted(t.admit(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i))));
    }
    // Evicted while it had an open socket: counted.
    assert!(metrics.address.evicted.get() >= 1);
    // The open socket still spends the budget it was admitted with.
    assert!(socket.allow() && socket.allow());
    assert!(!socket.allow());
}

#[test]
fn rested_addresses_are_forgotten_without_being_counted() {
    let limits = AddressLimits {
        table_entries: 64,
        connections: Some(Rate {
            rate: 1_000_000,
            burst: 1,
        }),
        frames: None,
        ..untrusted()
    };
    let (t, metrics) = table(limits);
    for i in 0..1000u32 {
        counted(t.admit(IpAddr::V4(std::net::Ipv4Addr::from(0x0c00_0000 + i))));
        // A million tokens a second: refilled within microseconds.
        std::thread::sleep(Duration::from_micros(5));
    }
    assert!(t.len() <= 64);
    assert_eq!(metrics.address.evicted.get(), 0);
}

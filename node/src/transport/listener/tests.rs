use super::*;

fn bounds() -> Bounds {
    Bounds {
        label: "client",
        permits: None,
        addresses: None,
        header_timeout: Duration::from_secs(5),
        tcp_keepalive: Some(Duration::from_secs(10)),
        user_timeout: Some(Duration::from_millis(20_000)),
        direct: None,
    }
}

#[tokio::test]
async fn accepted_sockets_inherit_the_listening_sockets_options_on_linux() {
    let bounds = bounds();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let inherits = Inherits::new(true);
    // Accepted before the listener had them: it lacks them, and gets them.
    let _c = TcpStream::connect(addr).await.unwrap();
    let (early, _) = listener.accept().await.unwrap();
    assert!(!has_options(&early, &bounds).unwrap());
    inherits.apply(&early, &bounds);
    assert!(
        has_options(&early, &bounds).unwrap(),
        "set on the socket itself"
    );

    set_options_on(socket2::SockRef::from(&listener), &bounds).unwrap();
    let _c = TcpStream::connect(addr).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    if cfg!(target_os = "linux") {
        assert!(has_options(&accepted, &bounds).unwrap(), "inherited");
        inherits.apply(&accepted, &bounds);
        let state = inherits.0.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(state, Inherits::YES, "known to be inherited");
    }
}

use super::*;

fn b(topic: &str, n: u32) -> Utf8Bytes {
    Utf8Bytes::from(format!(r#"[2,"{topic}","message",{{"n":{n}}}]"#))
}

fn events(take: Take) -> String {
    match take {
        Take::Events(bytes) => String::from_utf8(bytes.to_vec()).expect("utf-8"),
        other => panic!("no events: {other:?}"),
    }
}

#[test]
fn a_detached_link_keeps_the_first_broadcasts_and_reports_the_rest_per_topic() {
    let link = Link::new(2, 1 << 20);
    for (i, topic) in ["a", "a", "a", "b", "a"].iter().enumerate() {
        assert!(link.queue(b(topic, i as u32)));
    }
    // Replies are kept whatever the bound.
    assert!(link.queue(Utf8Bytes::from("[1,1,2,0]")));
    let generation = link.attach(None).expect("open");
    assert_eq!(
        events(link.take(generation)),
        "id: 1\ndata: [2,\"a\",\"message\",{\"n\":0}]\n\n\
         id: 2\ndata: [2,\"a\",\"message\",{\"n\":1}]\n\n\
         id: 3\ndata: [1,1,2,0]\n\n\
         id: 4\ndata: [2,\"a\",\"_overflow\",{\"dropped\":2}]\n\n\
         id: 5\ndata: [2,\"b\",\"_overflow\",{\"dropped\":1}]\n\n"
    );
    assert_eq!(link.take(generation), Take::Empty);
    // Attached, the frame bound does not apply.
    for i in 0..5 {
        assert!(link.queue(b("a", i)));
    }
    assert_eq!(events(link.take(generation)).matches("data: ").count(), 5);
}

#[test]
fn last_event_id_gets_again_what_a_dead_stream_was_given() {
    let link = Link::new(3, 1 << 20);
    let first = link.attach(None).expect("open");
    for n in 1..=5 {
        assert!(link.queue(b("a", n)));
    }
    // The stream took all five, but its client saw only the first.
    assert_eq!(events(link.take(first)).matches("data: ").count(), 5);
    link.detach(first);
    assert!(link.queue(b("a", 6)));
    // Given again: 2, 3 and 4 were trimmed (3 given frames are kept: 3, 4
    // and 5), so 2 is lost; then the bound (3) keeps 3, 4, 5 and drops 6.
    let second = link.attach(Some(1)).expect("open");
    assert_eq!(
        events(link.take(second)),
        "id: 3\ndata: [2,\"a\",\"message\",{\"n\":3}]\n\n\
         id: 4\ndata: [2,\"a\",\"message\",{\"n\":4}]\n\n\
         id: 5\ndata: [2,\"a\",\"message\",{\"n\":5}]\n\n\
         id: 7\ndata: [2,\"a\",\"_overflow\",{\"dropped\":2}]\n\n"
    );
    // A client that got everything gets nothing again.
    let third = link.attach(Some(7)).expect("open");
    assert_eq!(link.take(third), Take::Empty);
}

#[test]
fn a_new_stream_replaces_the_old_and_the_byte_bound_ends_the_session() {
    let link = Link::new(8, 30);
    let first = link.attach(None).expect("open");
    let second = link.attach(None).expect("open");
    assert_eq!(link.take(first), Take::End(None));
    link.detach(first);
    assert_eq!(
        link.deadline(Duration::from_secs(1)),
        None,
        "still attached"
    );
    link.detach(second);
    assert!(link.deadline(Duration::from_secs(1)).is_some());
    assert!(link.queue(b("a", 1)));
    assert!(!link.queue(b("a", 2)), "over 30 bytes");
    assert!(link.end(Ended::Closed(CloseReason::SlowConsumer)));
    assert!(!link.end(Ended::Expired));
    assert_eq!(link.attach(None), None);
    assert!(!link.heard());
    assert_eq!(
        link.take(second),
        Take::End(Some(CloseReason::SlowConsumer))
    );
}

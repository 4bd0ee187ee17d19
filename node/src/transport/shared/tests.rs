use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A shared server socket and the client end of its connection.
async fn pair(read: &[u8], write: &[u8]) -> (SharedIo, Arc<SharedSocket>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let (io, socket) = SharedIo::new(Held::bare(server), read.to_vec(), write.to_vec());
    (io, socket, client)
}

fn text(payload: &[u8]) -> Vec<u8> {
    let mut head = [0u8; 10];
    let mut frame = text_head(&mut head, payload.len()).to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// Split whole unmasked frames into (opcode, payload); panics on a torn one.
fn parse(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, head) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert_eq!(bytes[1] & 0x80, 0, "server frames are not masked");
        out.push((bytes[0] & 0x0f, bytes[head..head + len].to_vec()));
        bytes = &bytes[head + len..];
    }
    out
}

#[test]
fn a_text_head_has_the_shortest_length_encoding() {
    let mut buf = [0u8; 10];
    assert_eq!(text_head(&mut buf, 0), [0x81, 0]);
    assert_eq!(text_head(&mut buf, 125), [0x81, 125]);
    assert_eq!(text_head(&mut buf, 126), [0x81, 126, 0, 126]);
    assert_eq!(text_head(&mut buf, 65535), [0x81, 126, 0xff, 0xff]);
    assert_eq!(
        text_head(&mut buf, 65536),
        [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
    );
    let big = vec![b'x'; 70_000];
    assert_eq!(parse(&text(&big)), [(1, big)]);
}

#[test]
fn a_close_among_whole_frames_is_found_and_torn_bytes_count_as_one() {
    let mut frames = text(b"hello");
    frames.extend_from_slice(&[0x89, 0]); // a ping
    frames.extend(text(&[b'y'; 300]));
    assert!(!closes(&frames));
    assert!(!closes(&[]));
    let mut closing = frames.clone();
    closing.extend_from_slice(&[0x88, 2, 0x03, 0xe8]);
    assert!(closes(&closing));
    assert!(closes(&frames[..frames.len() - 1]), "a torn frame");
    assert!(closes(&[0x81]), "a torn head");
    assert!(closes(&[0x81, 0x85, 1, 2, 3, 4, 5]), "a masked frame");
    assert!(closes(&[
        0x81, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
    ]));
}

#[tokio::test]
async fn a_direct_write_waits_for_the_preface_then_goes_whole() {
    let (mut io, socket, mut client) = pair(b"", b"HTTP/1.1 101\r\n\r\n").await;
    assert_eq!(socket.write_text(b"early"), Wrote::Nothing, "the 101 first");
    io.flush().await.unwrap();
    assert_eq!(socket.write_text(b"hi"), Wrote::All);
    io.write_all(&text(b"from the task")).await.unwrap();
    io.flush().await.unwrap();
    let mut got = vec![0u8; 16 + 4 + 15];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..16], b"HTTP/1.1 101\r\n\r\n");
    assert_eq!(
        parse(&got[16..]),
        [(1, b"hi".to_vec()), (1, b"from the task".to_vec())]
    );
}

#[tokio::test]
async fn what_the_kernel_does_not_take_goes_first_and_whole() {
    let (mut io, socket, mut client) = pair(b"", b"").await;
    socket2::SockRef::from(socket.tcp())
        .set_send_buffer_size(4096)
        .unwrap();
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(4096)
        .unwrap();
    // Direct writes while the client reads nothing, until one does not go
    // whole: the kernel's buffers are full.
    let mut sent = Vec::new();
    loop {
        let payload = format!("{:06}", sent.len()).repeat(1500).into_bytes();
        match socket.write_text(&payload) {
            Wrote::All => sent.push(payload),
            Wrote::Part => {
                sent.push(payload);
                assert_eq!(
                    socket.write_text(b"behind"),
                    Wrote::Nothing,
                    "nothing while part of a frame waits"
                );
                break;
            }
            Wrote::Nothing => break,
        }
        assert!(sent.len() < 100_000, "the socket never filled");
    }
    // The connection's task writes a frame behind them; the client reads.
    let last = text(b"last");
    let writer = tokio::spawn(async move {
        io.write_all(&last).await.unwrap();
        io.flush().await.unwrap();
        io
    });
    let expected: usize = sent.iter().map(|p| text(p).len()).sum::<usize>() + 6;
    let mut got = vec![0u8; expected];
    client.read_exact(&mut got).await.unwrap();
    let _io = writer.await.unwrap();
    let frames = parse(&got);
    assert_eq!(frames.len(), sent.len() + 1);
    for (i, (op, payload)) in frames.iter().enumerate().take(sent.len()) {
        assert_eq!(
            (*op, payload),
            (1, &sent[i]),
            "frame {i} whole and in order"
        );
    }
    assert_eq!(frames[sent.len()], (1, b"last".to_vec()));
    assert_eq!(
        socket.write_text(b"again"),
        Wrote::All,
        "drained: direct again"
    );
}

#[tokio::test]
async fn after_a_close_frame_nothing_is_written_directly() {
    let (mut io, socket, mut client) = pair(b"", b"").await;
    io.write_all(&[0x88, 2, 0x03, 0xe8]).await.unwrap();
    io.flush().await.unwrap();
    assert_eq!(socket.write_text(b"late"), Wrote::Nothing);
    let mut got = [0u8; 4];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, [0x88, 2, 0x03, 0xe8]);
}

#[tokio::test]
async fn reads_start_with_the_read_preface() {
    let (mut io, _socket, mut client) = pair(b"ab", b"").await;
    client.write_all(b"cd").await.unwrap();
    let mut got = [0u8; 4];
    io.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"abcd");
    drop(client);
    assert_eq!(io.read(&mut got).await.unwrap(), 0, "end of stream");
}

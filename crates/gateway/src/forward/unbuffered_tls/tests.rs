//! [`UnbufferedTls`] against a real rustls server (tokio-rustls, the mesh's server
//! configuration with client certificates required) on loopback: bytes arrive whole and in
//! order whatever the sizes of reads and writes, key updates from the instance are followed,
//! `close_notify` ends the stream both ways, and an idle connection keeps no buffer.

use std::sync::Arc;

use rustls_pki_types::ServerName;
use stratus_identity::{Authority, Expect, Mode};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::forward::upstream_tls::tests::{workload, TD};

/// Bytes no two offsets of which look alike over short runs: a misplaced or repeated chunk
/// shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A connected pair: the gateway's side over [`UnbufferedTls`], the instance's over
/// tokio-rustls.
async fn pair() -> (UnbufferedTls, TlsStream<TcpStream>) {
    let authority = Authority::create(TD, OffsetDateTime::now_utc()).unwrap();
    let instance = workload(&authority, "catalog");
    let gateway = workload(&authority, "gateway");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(instance.server_config(Mode::Required)));
    let accepting = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.unwrap()
    });
    let config = Arc::new(gateway.client_config(Expect::Service("catalog".into())));
    let tcp = TcpStream::connect(address).await.unwrap();
    let name = ServerName::IpAddress(address.ip().into());
    let client = UnbufferedTls::connect(tcp, config, name).await.unwrap();
    (client, accepting.await.unwrap())
}

async fn read_exactly(reader: &mut (impl AsyncRead + Unpin), len: usize, chunk: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(len);
    let mut buf = vec![0u8; chunk];
    while got.len() < len {
        let n = reader.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended after {} of {len} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test]
async fn a_large_answer_arrives_whole_and_in_order_through_small_and_large_reads() {
    for chunk in [1_000, 64 * 1024] {
        let (mut client, mut server) = pair().await;
        let answer = pattern(200_000);
        let sent = answer.clone();
        let writing = tokio::spawn(async move {
            server.write_all(&sent).await.unwrap();
            server.flush().await.unwrap();
            server
        });
        assert!(read_exactly(&mut client, answer.len(), chunk).await == answer);
        drop(writing.await.unwrap());
    }
}

#[tokio::test]
async fn writes_of_every_size_arrive_whole_and_in_order() {
    let (mut client, mut server) = pair().await;
    let mut expected = Vec::new();
    for len in [1, 200, 16_384, 16_385, 70_000, 300_000] {
        let data = pattern(len);
        client.write_all(&data).await.unwrap();
        expected.extend_from_slice(&data);
    }
    // A request's head and body as one vectored write.
    let (head, body) = (b"POST / HTTP/1.1\r\n\r\n".to_vec(), pattern(5_000));
    let slices = [io::IoSlice::new(&head), io::IoSlice::new(&body)];
    let all = [head.as_slice(), body.as_slice()].concat();
    let n = client.write_vectored(&slices).await.unwrap();
    assert_eq!(n, all.len(), "both slices fit one write");
    expected.extend_from_slice(&all);
    client.flush().await.unwrap();
    let got = read_exactly(&mut server, expected.len(), 32 * 1024).await;
    assert!(got == expected);
}

#[tokio::test]
async fn key_updates_from_the_instance_are_followed_both_ways() {
    let (mut client, mut server) = pair().await;
    for round in 0..3u8 {
        // The instance asks for new keys each way, then answers under its new ones.
        server.get_mut().1.refresh_traffic_keys().unwrap();
        let answer = pattern(20_000 + round as usize);
        server.write_all(&answer).await.unwrap();
        server.flush().await.unwrap();
        assert!(read_exactly(&mut client, answer.len(), 4096).await == answer);
        // The gateway's next request: the instance can read it only if the gateway answered
        // the key update and switched its own keys.
        let request = pattern(3_000 + round as usize);
        client.write_all(&request).await.unwrap();
        client.flush().await.unwrap();
        assert!(read_exactly(&mut server, request.len(), 4096).await == request);
    }
}

#[tokio::test]
async fn close_notify_ends_the_stream_each_way() {
    let (mut client, mut server) = pair().await;
    server.write_all(b"last words").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"last words");

    client.write_all(b"bye").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    // tokio-rustls says a stream that ends without close_notify is an error.
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye");
}

#[tokio::test]
async fn a_connection_cut_inside_a_record_is_an_error_not_an_end() {
    let (mut client, server) = pair().await;
    let mut tcp = server.into_inner().0;
    // A record header promising 100 bytes, and then the connection ends.
    tcp.write_all(&[0x17, 0x03, 0x03, 0x00, 0x64, 1, 2, 3])
        .await
        .unwrap();
    drop(tcp);
    let error = client.read(&mut [0u8; 64]).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_record_that_does_not_decrypt_is_a_tls_error() {
    let (mut client, server) = pair().await;
    let mut tcp = server.into_inner().0;
    let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    forged.extend_from_slice(&pattern(0x40));
    tcp.write_all(&forged).await.unwrap();
    let error = client.read(&mut [0u8; 64]).await.unwrap_err();
    assert!(
        crate::forward::upstream_tls::is_tls_error(&error),
        "not rustls's: {error:?}"
    );
}

#[tokio::test]
async fn an_idle_connection_keeps_no_buffer() {
    let (mut client, mut server) = pair().await;
    let answer = pattern(40_000);
    server.write_all(&answer).await.unwrap();
    server.flush().await.unwrap();
    client.write_all(&pattern(30_000)).await.unwrap();
    client.flush().await.unwrap();
    assert!(read_exactly(&mut client, answer.len(), 64 * 1024).await == answer);
    assert!(!client.holds_unread());
    assert!(client.buffered_capacity() > 0);
    client.relax();
    assert_eq!(client.buffered_capacity(), 0);
    // And it still works afterwards.
    server.write_all(b"again").await.unwrap();
    server.flush().await.unwrap();
    assert_eq!(read_exactly(&mut client, 5, 64).await, b"again");
}

#[tokio::test]
async fn an_idle_connections_read_buffer_goes_to_the_next_reader() {
    let (mut first, mut first_server) = pair().await;
    let (mut second, mut second_server) = pair().await;
    // The second connection goes idle straight after its handshake.
    second.relax();
    let spare = spare_buffers();
    first_server.write_all(b"one").await.unwrap();
    first_server.flush().await.unwrap();
    assert_eq!(read_exactly(&mut first, 3, 64).await, b"one");
    first.relax();
    assert_eq!(spare_buffers(), spare + 1, "the emptied buffer is kept");
    second_server.write_all(b"two").await.unwrap();
    second_server.flush().await.unwrap();
    assert_eq!(read_exactly(&mut second, 3, 64).await, b"two");
    assert_eq!(
        spare_buffers(),
        spare,
        "and taken by the next connection to read"
    );
    drop(second);
    assert_eq!(
        spare_buffers(),
        spare + 1,
        "a dropped connection leaves its buffer too"
    );
}

#[tokio::test]
async fn an_exchange_on_an_established_connection_takes_two_steps() {
    let (mut client, mut server) = pair().await;
    for round in 0..5 {
        let before = client.turns;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(
            read_exactly(&mut server, 18, 64).await,
            b"GET / HTTP/1.1\r\n\r\n"
        );
        // The client waits for the answer before it is written: a read that finds nothing.
        let answering = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            server.flush().await.unwrap();
            server
        });
        assert_eq!(
            read_exactly(&mut client, 19, 4096).await,
            b"HTTP/1.1 200 OK\r\n\r\n"
        );
        server = answering.await.unwrap();
        client.relax();
        // The first exchange may still step over the instance's post-handshake messages.
        if round > 0 {
            assert_eq!(
                client.turns - before,
                2,
                "round {round}: the write, then the answer's record"
            );
        }
    }
}

#[tokio::test]
async fn an_idle_connections_write_buffer_goes_to_the_next_writer() {
    let (mut first, mut first_server) = pair().await;
    let (mut second, mut second_server) = pair().await;
    second.relax();
    let spare = spare_outgoing();
    first.write_all(b"one").await.unwrap();
    first.flush().await.unwrap();
    assert_eq!(read_exactly(&mut first_server, 3, 64).await, b"one");
    first.relax();
    assert_eq!(spare_outgoing(), spare + 1, "the emptied buffer is kept");
    second.write_all(b"two").await.unwrap();
    second.flush().await.unwrap();
    assert_eq!(read_exactly(&mut second_server, 3, 64).await, b"two");
    assert_eq!(
        spare_outgoing(),
        spare,
        "and taken by the next connection to write"
    );
    // A large write's buffer is not kept.
    second.write_all(&pattern(60_000)).await.unwrap();
    second.flush().await.unwrap();
    assert!(read_exactly(&mut second_server, 60_000, 64 * 1024).await == pattern(60_000));
    second.relax();
    assert_eq!(spare_outgoing(), spare, "a large buffer is freed");
}

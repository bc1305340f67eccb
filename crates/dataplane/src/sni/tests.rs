//! The SNI parser against real ClientHellos (produced by rustls), hand-made ones, every
//! truncation of them, and arbitrary bytes.

use std::sync::Arc;

use proptest::prelude::*;
use rustls::pki_types::ServerName;

use super::*;

/// Record header: type, version, length.
const RECORD_HEADER: usize = 5;

/// The first flight of a rustls client for `server_name`.
fn rustls_hello(
    server_name: &str,
    sni: bool,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("supported versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.enable_sni = sni;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = ServerName::try_from(server_name.to_string()).expect("valid server name");
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut hello = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut hello).expect("writing to a Vec");
    }
    hello
}

fn u16_len(bytes: &[u8]) -> [u8; 2] {
    u16::try_from(bytes.len())
        .expect("test data is small")
        .to_be_bytes()
}

/// A ClientHello body with these extensions, or without an extensions block at all.
fn hello_body(extensions: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([7; 32]);
    body.push(0);
    body.extend([0, 2, 0x13, 0x01]);
    body.extend([1, 0]);
    if let Some(extensions) = extensions {
        let mut block = Vec::new();
        for (kind, data) in extensions {
            block.extend(kind.to_be_bytes());
            block.extend(u16_len(data));
            block.extend(data);
        }
        body.extend(u16_len(&block));
        body.extend(block);
    }
    body
}

/// A `server_name` extension holding these (name type, name) entries.
fn server_name_extension(names: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for (kind, name) in names {
        list.push(*kind);
        list.extend(u16_len(name));
        list.extend(*name);
    }
    let mut data = u16_len(&list).to_vec();
    data.extend(list);
    (EXTENSION_SERVER_NAME, data)
}

/// A handshake message of type ClientHello around `body`.
fn client_hello(body: &[u8]) -> Vec<u8> {
    let length = u32::try_from(body.len()).expect("small").to_be_bytes();
    let mut message = vec![HANDSHAKE_CLIENT_HELLO];
    message.extend(&length[1..]);
    message.extend(body);
    message
}

/// `message` in handshake records of at most `fragment` bytes each.
fn records(message: &[u8], fragment: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in message.chunks(fragment) {
        out.extend([CONTENT_HANDSHAKE, 3, 1]);
        out.extend(u16_len(chunk));
        out.extend(chunk);
    }
    out
}

/// A single-record ClientHello with SNI `name`.
fn hello_for(name: &[u8]) -> Vec<u8> {
    let extensions = [server_name_extension(&[(NAME_TYPE_HOST_NAME, name)])];
    records(
        &client_hello(&hello_body(Some(&extensions))),
        MAX_RECORD_PAYLOAD,
    )
}

fn server_name(received: &[u8]) -> Option<String> {
    match parse(received) {
        Ok(Parsed::Complete { server_name }) => server_name.map(|name| name.to_string()),
        other => panic!("not a complete hello: {other:?}"),
    }
}

#[test]
fn rustls_hellos_yield_their_server_name() {
    let tls13 = rustls_hello("gateway.example.com", true, rustls::DEFAULT_VERSIONS);
    assert_eq!(server_name(&tls13).as_deref(), Some("gateway.example.com"));
    let tls12 = rustls_hello("old.example.com", true, &[&rustls::version::TLS12]);
    assert_eq!(server_name(&tls12).as_deref(), Some("old.example.com"));
    let without = rustls_hello("hidden.example.com", false, rustls::DEFAULT_VERSIONS);
    assert_eq!(server_name(&without), None);
}

#[test]
fn every_truncation_is_incomplete_and_trailing_bytes_are_ignored() {
    let hello = rustls_hello("a.example.com", true, rustls::DEFAULT_VERSIONS);
    for end in 0..hello.len() {
        assert_eq!(parse(&hello[..end]), Ok(Parsed::Incomplete), "{end} bytes");
    }
    let mut with_early_data = hello.clone();
    with_early_data.extend([23, 3, 3, 0, 1, 0xff]);
    assert_eq!(
        server_name(&with_early_data).as_deref(),
        Some("a.example.com")
    );
}

#[test]
fn a_hello_split_over_records_is_joined() {
    let hello = rustls_hello("split.example.com", true, rustls::DEFAULT_VERSIONS);
    let message = &hello[RECORD_HEADER..];
    for fragment in [1, 3, 100] {
        let split = records(message, fragment);
        assert_eq!(server_name(&split).as_deref(), Some("split.example.com"));
        for end in 0..split.len() {
            assert_eq!(parse(&split[..end]), Ok(Parsed::Incomplete), "{end} bytes");
        }
    }
}

#[test]
fn names_are_normalised_and_other_name_types_skipped() {
    assert_eq!(
        server_name(&hello_for(b"WWW.Example.COM.")).as_deref(),
        Some("www.example.com")
    );
    let extensions = [
        (16, b"\x00\x03\x02h2".to_vec()),
        server_name_extension(&[(7, b"ignored"), (NAME_TYPE_HOST_NAME, b"b.example.com")]),
    ];
    let hello = records(&client_hello(&hello_body(Some(&extensions))), 1 << 14);
    assert_eq!(server_name(&hello).as_deref(), Some("b.example.com"));
    let no_extensions = records(&client_hello(&hello_body(None)), 1 << 14);
    assert_eq!(server_name(&no_extensions), None);
    let other_extensions = records(&client_hello(&hello_body(Some(&extensions[..1]))), 99);
    assert_eq!(server_name(&other_extensions), None);
}

#[test]
fn non_tls_bytes_are_refused_at_the_first_wrong_byte() {
    use InvalidClientHello::*;
    assert_eq!(parse(b"G"), Err(NotTls));
    assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Err(NotTls));
    // An SSLv2-compatible hello, which no TLS 1.2+ client sends.
    assert_eq!(parse(b"\x80\x2e\x01\x03\x01"), Err(NotTls));
    assert_eq!(parse(b"\x16\x04"), Err(NotTls));
    assert_eq!(parse(b"\x16\x03\x01\x00\x00"), Err(RecordLength));
    assert_eq!(parse(b"\x16\x03\x01\x40\x01"), Err(RecordLength));
    assert_eq!(parse(b"\x16\x03\x01\x00\x01\x02"), Err(NotClientHello));
    // A 16 MiB ClientHello is refused from its header, without waiting for the bytes.
    assert_eq!(
        parse(b"\x16\x03\x01\x00\x04\x01\xff\xff\xff"),
        Err(TooLarge)
    );
}

#[test]
fn malformed_hellos_are_errors() {
    use InvalidClientHello::*;
    for name in [
        &b""[..],
        b"a b.example.com",
        b"\xc3\xa4.example.com",
        b"a:443",
    ] {
        assert_eq!(parse(&hello_for(name)), Err(InvalidServerName), "{name:?}");
    }
    let sni = server_name_extension(&[(NAME_TYPE_HOST_NAME, b"a.example.com")]);
    let twice = [sni.clone(), sni];
    let hello = records(&client_hello(&hello_body(Some(&twice))), 1 << 14);
    assert!(matches!(parse(&hello), Err(Malformed(_))));
    let two_names = [server_name_extension(&[
        (NAME_TYPE_HOST_NAME, b"a.example.com"),
        (NAME_TYPE_HOST_NAME, b"b.example.com"),
    ])];
    let hello = records(&client_hello(&hello_body(Some(&two_names))), 1 << 14);
    assert!(matches!(parse(&hello), Err(Malformed(_))));
    let empty_list = [server_name_extension(&[])];
    let hello = records(&client_hello(&hello_body(Some(&empty_list))), 1 << 14);
    assert!(matches!(parse(&hello), Err(Malformed(_))));

    // A length that runs past the end of the (complete) message.
    let mut body = hello_body(None);
    body[34] = 5;
    assert!(matches!(
        parse(&records(&client_hello(&body), 1 << 14)),
        Err(Malformed(_))
    ));
    let mut trailing = hello_body(Some(&[]));
    trailing.push(0);
    assert!(matches!(
        parse(&records(&client_hello(&trailing), 1 << 14)),
        Err(Malformed(_))
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&bytes);
        let mut framed = vec![CONTENT_HANDSHAKE, 3, 1];
        framed.extend(&bytes);
        let _ = parse(&framed);
    }

    #[test]
    fn corrupted_real_hellos_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut hello = rustls_hello("fuzz.example.com", true, rustls::DEFAULT_VERSIONS);
        for (index, byte) in flips {
            let at = index.index(hello.len());
            hello[at] = byte;
        }
        let _ = parse(&hello);
    }

    #[test]
    fn any_dns_name_round_trips(
        name in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,12}){0,4}",
        fragment in 1usize..300,
    ) {
        let message = client_hello(&hello_body(Some(&[server_name_extension(&[(
            NAME_TYPE_HOST_NAME,
            name.as_bytes(),
        )])])));
        let hello = records(&message, fragment);
        prop_assert_eq!(server_name(&hello), Some(name));
    }
}

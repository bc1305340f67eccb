//! Framing, messages and status derivation of `grpc`.

use super::*;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
        .collect()
}

fn sample_response() -> EchoResponse {
    EchoResponse {
        assertions: Some(Assertions {
            fully_qualified_method: format!("/{SERVICE}/Echo"),
            headers: vec![Header {
                key: "x-jitter".to_owned(),
                value: "7".to_owned(),
            }],
            authority: "foo.bar.com".to_owned(),
            context: Some(Context {
                namespace: "gateway-conformance-infra".to_owned(),
                pod: "grpc-infra-backend-v1-abcdefghij-klmno".to_owned(),
                ..Context::default()
            }),
            tls_assertions: None,
        }),
        request: Some(EchoRequest {}),
    }
}

#[test]
fn an_empty_request_is_five_zero_bytes() {
    assert_eq!(&encode_frame(&EchoRequest {})[..], &[0, 0, 0, 0, 0]);
}

#[test]
fn frames_round_trip_with_big_endian_length() {
    let response = sample_response();
    let frame = encode_frame(&response);
    let length = frame.len() - 5;
    assert_eq!(&frame[1..5], &(length as u32).to_be_bytes());
    let payload = decode_frame(&frame).expect("well-formed frame");
    assert_eq!(EchoResponse::decode(payload).expect("decodes"), response);
}

#[test]
fn malformed_frames_are_errors() {
    assert_eq!(decode_frame(&[0, 0, 0]), Err(FrameError::Truncated(3)));
    assert_eq!(decode_frame(&[1, 0, 0, 0, 0]), Err(FrameError::Compressed));
    assert_eq!(
        decode_frame(&[0, 0, 0, 0, 2, 9]),
        Err(FrameError::LengthMismatch {
            declared: 2,
            actual: 1
        })
    );
}

#[test]
fn field_numbers_follow_the_proto() {
    // Context.pod is field 4, a string: tag byte (4 << 3) | 2.
    let context = Context {
        pod: "p".to_owned(),
        ..Context::default()
    };
    assert_eq!(context.encode_to_vec(), vec![0x22, 1, b'p']);
    // Assertions.authority is field 3.
    let assertions = Assertions {
        authority: "a".to_owned(),
        ..Assertions::default()
    };
    assert_eq!(assertions.encode_to_vec(), vec![0x1a, 1, b'a']);
}

#[test]
fn code_names_parse_in_either_spelling() {
    assert_eq!(Code::from_name("OK"), Some(Code::OK));
    assert_eq!(Code::from_name("Unimplemented"), Some(Code::UNIMPLEMENTED));
    assert_eq!(Code::from_name("DEADLINE_EXCEEDED"), Some(Code(4)));
    assert_eq!(Code::from_name("Nope"), None);
    assert_eq!(Code(14).name(), "Unavailable");
    assert_eq!(Code(99).name(), "Code(99)");
}

#[test]
fn status_comes_from_trailers() {
    let h = headers(&[("content-type", "application/grpc")]);
    let t = headers(&[("grpc-status", "0")]);
    assert_eq!(call_status(200, &h, Some(&t)), Code::OK);
}

#[test]
fn trailers_only_responses_carry_the_status_in_headers() {
    let h = headers(&[("content-type", "application/grpc"), ("grpc-status", "12")]);
    assert_eq!(call_status(200, &h, None), Code::UNIMPLEMENTED);
}

#[test]
fn http_errors_map_like_grpc_go() {
    let h = headers(&[("content-type", "text/plain")]);
    assert_eq!(call_status(404, &h, None), Code::UNIMPLEMENTED);
    assert_eq!(call_status(503, &h, None), Code::UNAVAILABLE);
    assert_eq!(call_status(500, &h, None), Code::UNKNOWN);
    // A 200 that is not gRPC, and a gRPC stream without any status.
    assert_eq!(call_status(200, &h, None), Code::UNKNOWN);
    let grpc = headers(&[("content-type", "application/grpc+proto")]);
    assert_eq!(call_status(200, &grpc, None), Code::INTERNAL);
}

#[test]
fn an_ok_reply_is_decoded_and_a_broken_one_is_internal() {
    let h = headers(&[("content-type", "application/grpc")]);
    let t = headers(&[("grpc-status", "0")]);
    let good = outcome(200, &h, Some(&t), &encode_frame(&sample_response()));
    assert_eq!(good.response, Some(sample_response()));
    let broken = outcome(200, &h, Some(&t), &[0, 0, 0, 0, 1, 0xff]);
    assert_eq!(broken.code, Code::INTERNAL);
}

#[test]
fn metadata_keys_are_lowercased_and_authority_is_the_uri_authority() {
    let call = Call {
        authority: "foo.bar.com".to_owned(),
        full_method: format!("/{SERVICE}/EchoTwo"),
        metadata: vec![("X-Jitter".to_owned(), "3".to_owned())],
    };
    let request = request(&call).expect("valid call");
    assert_eq!(
        request.uri().authority().map(|a| a.as_str()),
        Some("foo.bar.com")
    );
    assert_eq!(request.uri().path(), format!("/{SERVICE}/EchoTwo"));
    assert_eq!(
        request.headers().get("x-jitter"),
        Some(&HeaderValue::from_static("3"))
    );
}

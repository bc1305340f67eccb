//! gRPC calls on the HTTP request path: recognising them, and ending the ones the gateway itself
//! fails in the terms gRPC clients read.
//!
//! A gRPC client takes the outcome of a call from `grpc-status`, not from the HTTP status: "If
//! grpc-status was provided, it _must_ be used" ([HTTP to gRPC status mapping]). So a gateway
//! error on a gRPC call becomes a *Trailers-Only* response ([gRPC over HTTP/2], "Responses":
//! "Trailers-Only → HTTP-Status Content-Type Trailers"): HTTP status 200,
//! `content-type: application/grpc`, and `grpc-status` and `grpc-message` in the only HEADERS
//! frame, which ends the stream. Which code each error gets is decided next to its HTTP status,
//! in `ProxyError::grpc_code`.
//!
//! Everything else needs nothing gRPC-specific. Bodies stream frame by frame, so the trailers
//! in which a backend sends `grpc-status` reach the client as they were sent (and a backend's
//! own Trailers-Only answer stays one HEADERS frame, since its body reports its end at once).
//! The backend is chosen by weight for every request, and a gRPC call is one request, so the
//! split is per call even when one HTTP/2 connection carries them all.
//!
//! [gRPC over HTTP/2]: https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md
//! [HTTP to gRPC status mapping]:
//!     https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md

use http::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::body::{self, ProxyBody};

/// `grpc-status`.
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The media type every gRPC content type starts with.
const GRPC_CONTENT_TYPE: &str = "application/grpc";

/// The gRPC status codes the gateway answers with. Backends' codes pass through as they are
/// and never need this type. Descriptions are quoted from gRPC's `doc/statuscodes.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// 4: "The deadline expired before the operation could complete."
    DeadlineExceeded,
    /// 7: "The caller does not have permission to execute the specified operation."
    PermissionDenied,
    /// 8: "Some resource has been exhausted, perhaps a per-user quota".
    ResourceExhausted,
    /// 12: "The operation is not implemented or is not supported/enabled in this service."
    Unimplemented,
    /// 13: "Internal errors. This means that some invariants expected by the underlying system
    /// have been broken."
    Internal,
    /// 14: "The service is currently unavailable. This is most likely a transient condition,
    /// which can be corrected by retrying with a backoff."
    Unavailable,
    /// 16: "The request does not have valid authentication credentials for the operation."
    Unauthenticated,
}

/// Whether a request is a gRPC call. The gRPC spec: "Content-Type → "content-type"
/// "application/grpc" [("+proto" / "+json" / {custom})]"; parameters (`application/grpc;…`)
/// are accepted too, as gRPC servers do. gRPC-Web (`application/grpc-web…`) is answered as
/// plain HTTP. Type and subtype compare case-insensitively (RFC 9110 §8.3.1).
pub fn is_grpc_request(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    let (media_type, rest) = value.split_at(value.len().min(GRPC_CONTENT_TYPE.len()));
    media_type.eq_ignore_ascii_case(GRPC_CONTENT_TYPE.as_bytes())
        && matches!(rest.first(), None | Some(b'+' | b';'))
}

/// A Trailers-Only response that ends a gRPC call with `code` and `message`.
///
/// The body is empty and says so before it is polled, so hyper sends the headers as one HEADERS
/// frame with END_STREAM on HTTP/2, which is what "Trailers-Only" means there. An empty
/// `message` is left out (`Status-Message` is optional).
pub fn trailers_only(code: Code, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(body::empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(GRPC_CONTENT_TYPE),
    );
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from(code.as_u16()));
    if !message.is_empty() {
        let encoded = HeaderValue::try_from(percent_encode(message))
            .expect("percent-encoded text is printable ASCII, which is a valid header value");
        headers.insert(GRPC_MESSAGE.clone(), encoded);
    }
    response
}

// === impl Code ===

impl Code {
    /// The number sent in `grpc-status`.
    pub fn as_u16(self) -> u16 {
        match self {
            Self::DeadlineExceeded => 4,
            Self::PermissionDenied => 7,
            Self::ResourceExhausted => 8,
            Self::Unimplemented => 12,
            Self::Internal => 13,
            Self::Unavailable => 14,
            Self::Unauthenticated => 16,
        }
    }
}

// === helpers ===

/// Encodes `grpc-message` as the gRPC spec requires: "Percent-Byte-Unencoded → 1*( %x20-%x24 /
/// %x26-%x7E ) ; space and VCHAR, except %", and every other byte of the UTF-8 text as
/// "Percent-Byte-Encoded → "%" 2HEXDIGIT".
fn percent_encode(message: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut encoded = String::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push('%');
            encoded.push(char::from(HEX[usize::from(byte >> 4)]));
            encoded.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use http_body::Body;

    fn content_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(header::CONTENT_TYPE, value);
        }
        headers
    }

    #[test]
    fn grpc_content_types_are_recognised() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc+json",
            "application/grpc;charset=utf-8",
            "Application/GRPC+proto",
        ] {
            assert!(is_grpc_request(&content_type(grpc)), "{grpc}");
        }
        for other in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpcx",
            "application/json",
            "application/gr",
            "",
        ] {
            assert!(!is_grpc_request(&content_type(other)), "{other}");
        }
        assert!(!is_grpc_request(&HeaderMap::new()));
    }

    #[test]
    fn message_is_percent_encoded() {
        assert_eq!(
            percent_encode("no route: 404 Not Found"),
            "no route: 404 Not Found"
        );
        assert_eq!(percent_encode("100%"), "100%25");
        assert_eq!(percent_encode("a\nb\tc"), "a%0Ab%09c");
        assert_eq!(percent_encode("héllo ☃"), "h%C3%A9llo %E2%98%83");
        assert_eq!(percent_encode("~ !$&"), "~ !$&");
        assert_eq!(percent_encode("\u{7f}"), "%7F");
    }

    #[test]
    fn trailers_only_has_status_in_headers_and_an_ended_body() {
        let response = trailers_only(Code::Unavailable, "503 Service Unavailable");
        assert_eq!(response.status(), StatusCode::OK);
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header("content-type"), Some("application/grpc"));
        assert_eq!(header("grpc-status"), Some("14"));
        assert_eq!(header("grpc-message"), Some("503 Service Unavailable"));
        // What makes hyper end the stream with the HEADERS frame.
        assert!(response.body().is_end_stream());

        let bare = trailers_only(Code::DeadlineExceeded, "");
        assert_eq!(
            bare.headers().get("grpc-status").map(HeaderValue::as_bytes),
            Some(&b"4"[..])
        );
        assert!(!bare.headers().contains_key("grpc-message"));
    }
}

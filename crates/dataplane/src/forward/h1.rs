//! HTTP/1.1 framing for the upstream side of the direct exchange (`direct.rs`): the request
//! head we write, the response head we read, and the response body's framing (RFC 9112,
//! sections 6 and 7).
//!
//! `httparse` (the parser hyper uses) reads the response head. What is written here is what
//! no crate offers apart from a whole client: the choice of body framing from the head, and
//! a chunked decoder that works on our own read buffer. Upstream bytes are untrusted: every
//! malformed input is an error (the request gets a 502), never a panic, and every length is
//! checked before it is used.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode, Version};

/// The largest response head (or chunked trailer section) we read.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// The most header fields a response head may have (hyper's limit as well).
const MAX_HEADERS: usize = 100;

/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

/// What is wrong with the bytes an upstream sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// The response head does not parse.
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    /// The response head is larger than we read.
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// A header field parses but is not a valid name or value.
    #[error("invalid response header {0:?}")]
    Header(String),
    /// Content-Length is not a number, or its values disagree.
    #[error("invalid Content-Length")]
    ContentLength,
    /// A status a response to our request cannot have.
    #[error("unexpected status {0}")]
    Status(u16),
    /// A chunk-size line that does not parse.
    #[error("invalid chunk size line")]
    ChunkSize,
    /// Chunk data not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    /// The trailer section does not parse, or is too large.
    #[error("invalid trailer section")]
    Trailers,
}

/// How a response body is delimited (RFC 9112, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: a response to HEAD, 204 or 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: Framing,
    /// Whether the connection may carry another request once the body has been read.
    pub(crate) keep_alive: bool,
}

/// What the start of the read buffer holds.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// An interim (1xx) response of this many bytes, which is skipped.
    Informational(usize),
    /// A final response head, removed from the buffer.
    Complete(Head),
}

/// Appends the head of a bodiless request: the request line with the origin-form target,
/// then the header fields as they are. `http`'s types cannot hold CR or LF in a method,
/// target, name or value, so nothing here can split the head.
pub(crate) fn encode_request(parts: &Parts, out: &mut Vec<u8>) {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A method that defines a meaning for content gets an explicit empty one (RFC 9110,
    // section 8.6), as hyper's client sends it.
    let expects_content = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    if expects_content && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses the response head at the start of `buffer`, the answer to a `method` request; a
/// complete head is taken out of the buffer (its header values point into one copy of it).
pub(crate) fn parse_response(
    buffer: &mut BytesMut,
    method: &Method,
) -> Result<Parsed, FramingError> {
    // Left uninitialized: the parser writes only the slots it fills (3 KiB not to clear).
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buffer,
        &mut slots,
    );
    let length = match parsed {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() >= MAX_HEAD => {
            return Err(FramingError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(error) => return Err(FramingError::Head(error)),
    };
    let code = response.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| FramingError::Status(code))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // We never ask for an upgrade on this path (upgrades go over their own connection).
        return Err(FramingError::Status(code));
    }
    if status.is_informational() {
        return Ok(Parsed::Informational(length));
    }
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let base = buffer.as_ptr() as usize;
    let offset = |slice: &[u8]| {
        let start = slice.as_ptr() as usize - base;
        start..start + slice.len()
    };
    let fields: Vec<(Range<usize>, Range<usize>)> = response
        .headers
        .iter()
        .map(|h| (offset(h.name.as_bytes()), offset(h.value)))
        .collect();
    let head = take(buffer, length);
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        let invalid = || FramingError::Header(String::from_utf8_lossy(&head[name.clone()]).into());
        let field = HeaderName::from_bytes(&head[name.clone()]).map_err(|_| invalid())?;
        let value = HeaderValue::from_maybe_shared(head.slice(value)).map_err(|_| invalid())?;
        headers.append(field, value);
    }
    let (framing, delimited) = framing(method, status, &mut headers)?;
    let keep_alive = delimited && persistent(version, &headers);
    Ok(Parsed::Complete(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// The first `length` bytes of `buffer`, copied out of it.
///
/// Copied rather than split off: the read buffer then stays whole and is reused for the
/// connection's next read. A split-off part would keep the buffer's allocation alive (header
/// values and body chunks live on downstream), so every response would allocate a new one.
pub(crate) fn take(buffer: &mut BytesMut, length: usize) -> Bytes {
    let taken = Bytes::copy_from_slice(&buffer[..length]);
    buffer.advance(length);
    taken
}

/// How the body of a response is delimited (RFC 9112, section 6.3), and whether the
/// connection can be reused after it. `Content-Length` is removed when `Transfer-Encoding`
/// overrides it, so that the client is never told a length the body does not have.
fn framing(
    method: &Method,
    status: StatusCode,
    headers: &mut HeaderMap,
) -> Result<(Framing, bool), FramingError> {
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let chunked_last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        // A response with both is a sign of a confused upstream: the connection is not
        // reused after it (RFC 9112, section 6.3, item 3).
        let both = headers.remove(header::CONTENT_LENGTH).is_some();
        return Ok(if chunked_last {
            (Framing::Chunked, !both)
        } else {
            (Framing::UntilClose, false)
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| FramingError::ContentLength)?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FramingError::ContentLength);
            }
            let parsed: u64 = part.parse().map_err(|_| FramingError::ContentLength)?;
            if length.is_some_and(|known| known != parsed) {
                return Err(FramingError::ContentLength);
            }
            length = Some(parsed);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Empty, true),
        Some(length) => (Framing::Length(length), true),
        None => (Framing::UntilClose, false),
    })
}

/// Whether the upstream keeps the connection open after this response (RFC 9112, section
/// 9.3): HTTP/1.1 unless it says `close`, HTTP/1.0 only if it says `keep-alive`.
fn persistent(version: Version, headers: &HeaderMap) -> bool {
    let says = |token: &str| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if version == Version::HTTP_10 {
        says("keep-alive")
    } else {
        !says("close")
    }
}

/// The state of a chunked body (RFC 9112, section 7.1).
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside chunk data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: expecting the trailer section.
    Trailers,
    /// The body has ended.
    Done,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// More bytes are needed.
    NeedMore,
    /// Chunk data.
    Data(Bytes),
    /// The trailer fields, which end the body.
    Trailers(HeaderMap),
    /// The body ended without trailers.
    End,
}

impl Chunked {
    /// Decodes what `buffer` holds: the next piece of data, or the end of the body. Bytes
    /// are consumed from the buffer as they are decoded; after the end, whatever the buffer
    /// still holds does not belong to this body.
    pub(crate) fn decode(&mut self, buffer: &mut BytesMut) -> Result<Decoded, FramingError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = line_end(buffer, MAX_CHUNK_LINE, FramingError::ChunkSize)?
                    else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&buffer[..line])?;
                    buffer.advance(line + 2);
                    self.state = match size {
                        0 => ChunkState::Trailers,
                        size => ChunkState::Data(size),
                    };
                }
                ChunkState::Data(left) => {
                    if buffer.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(buffer.len());
                    let data = self::take(buffer, take);
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buffer.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buffer[..2] != b"\r\n" {
                        return Err(FramingError::ChunkEnd);
                    }
                    buffer.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => return self.trailers(buffer),
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }

    fn trailers(&mut self, buffer: &mut BytesMut) -> Result<Decoded, FramingError> {
        if buffer.starts_with(b"\r\n") {
            buffer.advance(2);
            self.state = ChunkState::Done;
            return Ok(Decoded::End);
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (length, fields) = match httparse::parse_headers(buffer, &mut slots) {
            Ok(httparse::Status::Complete(parsed)) => parsed,
            Ok(httparse::Status::Partial) if buffer.len() < MAX_HEAD => {
                return Ok(Decoded::NeedMore);
            }
            _ => return Err(FramingError::Trailers),
        };
        let mut trailers = HeaderMap::with_capacity(fields.len());
        for field in fields {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| FramingError::Trailers)?;
            let value = HeaderValue::from_bytes(field.value).map_err(|_| FramingError::Trailers)?;
            trailers.append(name, value);
        }
        buffer.advance(length);
        self.state = ChunkState::Done;
        Ok(Decoded::Trailers(trailers))
    }
}

/// Where the CRLF that ends the line at the start of `buffer` is, if it has arrived; a line
/// longer than `limit` without one is `error`.
fn line_end(
    buffer: &[u8],
    limit: usize,
    error: FramingError,
) -> Result<Option<usize>, FramingError> {
    let window = &buffer[..buffer.len().min(limit + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some(end)),
        None if buffer.len() > limit => Err(error),
        None => Ok(None),
    }
}

/// The size of a chunk-size line: hex digits, then optional extensions (`;name=value`),
/// which we ignore (RFC 9112, section 7.1.1).
fn chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(FramingError::ChunkSize);
    }
    let rest = &line[digits..];
    if rest.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(FramingError::ChunkSize);
    }
    // Whitespace may stand before the extensions (BWS), and nothing else may.
    let rest = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err(FramingError::ChunkSize);
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| FramingError::ChunkSize)?;
    u64::from_str_radix(text, 16).map_err(|_| FramingError::ChunkSize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8], method: Method) -> (Result<Parsed, FramingError>, BytesMut) {
        let mut buffer = BytesMut::from(bytes);
        let parsed = parse_response(&mut buffer, &method);
        (parsed, buffer)
    }

    fn complete(bytes: &[u8], method: Method) -> (Head, BytesMut) {
        match parse(bytes, method) {
            (Ok(Parsed::Complete(head)), rest) => (head, rest),
            (other, _) => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn a_request_head_is_written_as_it_is() {
        let request = http::Request::builder()
            .method(Method::GET)
            .uri("/a/b?c=d")
            .header("host", "example.com")
            .header("x-two", "1")
            .header("x-two", "2")
            .body(())
            .expect("request");
        let (parts, ()) = request.into_parts();
        let mut out = Vec::new();
        encode_request(&parts, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET /a/b?c=d HTTP/1.1\r\nhost: example.com\r\nx-two: 1\r\nx-two: 2\r\n\r\n"
        );
    }

    #[test]
    fn an_empty_put_says_its_length() {
        let request = http::Request::builder()
            .method(Method::PUT)
            .uri("/")
            .body(())
            .expect("request");
        let mut out = Vec::new();
        encode_request(&request.into_parts().0, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "PUT / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_head_with_a_length_is_split_off_the_buffer() {
        let (head, rest) = complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok",
            Method::GET,
        );
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.keep_alive);
        assert_eq!(head.headers["x-a"], "b");
        assert_eq!(&rest[..], b"ok");
    }

    #[test]
    fn a_partial_head_waits_and_a_huge_one_fails() {
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Le", Method::GET).0,
            Ok(Parsed::Partial)
        ));
        let mut huge = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        assert_eq!(
            parse(&huge, Method::GET).0.err(),
            Some(FramingError::HeadTooLarge)
        );
    }

    #[test]
    fn interim_responses_are_skipped() {
        let bytes = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n";
        match parse(bytes, Method::GET).0 {
            Ok(Parsed::Informational(length)) => assert_eq!(length, 40),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", Method::GET)
                .0
                .err(),
            Some(FramingError::Status(101))
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let frame = |bytes: &[u8], method| complete(bytes, method).0;
        let head = frame(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Method::HEAD,
        );
        assert_eq!((head.framing, head.keep_alive), (Framing::Empty, true));
        assert_eq!(head.headers["content-length"], "5");
        let head = frame(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            Method::GET,
        );
        assert_eq!(head.framing, Framing::Empty);
        let head = frame(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Method::GET,
        );
        assert_eq!((head.framing, head.keep_alive), (Framing::Chunked, true));
        // Transfer-Encoding wins over Content-Length, which goes; the connection is not reused.
        let head = frame(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::GET,
        );
        assert_eq!((head.framing, head.keep_alive), (Framing::Chunked, false));
        assert!(!head.headers.contains_key("content-length"));
        let head = frame(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            Method::GET,
        );
        assert_eq!(
            (head.framing, head.keep_alive),
            (Framing::UntilClose, false)
        );
        let head = frame(b"HTTP/1.1 200 OK\r\n\r\n", Method::GET);
        assert_eq!(
            (head.framing, head.keep_alive),
            (Framing::UntilClose, false)
        );
        let head = frame(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n",
            Method::GET,
        );
        assert_eq!(head.framing, Framing::Length(4));
        let head = frame(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Method::GET);
        assert_eq!(head.framing, Framing::Empty);
    }

    #[test]
    fn bad_lengths_are_errors() {
        for bytes in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            assert_eq!(
                parse(bytes, Method::GET).0.err(),
                Some(FramingError::ContentLength),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn persistence_depends_on_version_and_connection() {
        let alive = |bytes: &[u8]| complete(bytes, Method::GET).0.keep_alive;
        assert!(!alive(
            b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!alive(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(alive(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
    }

    #[test]
    fn malformed_heads_are_errors() {
        for bytes in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            b"HTTX/1.1 200 OK\r\n\r\n",
        ] {
            assert!(
                parse(bytes, Method::GET).0.is_err(),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    /// Feeds `input` to a decoder `step` bytes at a time; returns the data and the trailers.
    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), FramingError> {
        let mut decoder = Chunked::default();
        let mut buffer = BytesMut::new();
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buffer)? {
                Decoded::NeedMore => {
                    if fed == input.len() {
                        return Err(FramingError::ChunkEnd);
                    }
                    let next = (fed + step).min(input.len());
                    buffer.extend_from_slice(&input[fed..next]);
                    fed = next;
                }
                Decoded::Data(chunk) => data.extend_from_slice(&chunk),
                Decoded::Trailers(trailers) => return Ok((data, Some(trailers))),
                Decoded::End => return Ok((data, None)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_however_they_arrive() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, body.len()] {
            let (data, trailers) = decode_all(body, step).expect("decodes");
            assert_eq!(data, b"hello, world");
            assert!(trailers.is_none());
        }
        let (data, trailers) =
            decode_all(b"A\r\n0123456789\r\n0\r\ngrpc-status: 0\r\n\r\n", 4).expect("decodes");
        assert_eq!(data, b"0123456789");
        assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
    }

    #[test]
    fn bytes_after_the_last_chunk_stay_in_the_buffer() {
        let mut decoder = Chunked::default();
        let mut buffer = BytesMut::from(&b"0\r\n\r\nHTTP/1.1"[..]);
        assert_eq!(decoder.decode(&mut buffer), Ok(Decoded::End));
        assert_eq!(&buffer[..], b"HTTP/1.1");
        // The body stays ended.
        assert_eq!(decoder.decode(&mut buffer), Ok(Decoded::End));
        assert_eq!(&buffer[..], b"HTTP/1.1");
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for body in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"-5\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\n;x\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(body, 1).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert_eq!(decode_all(&long, 64).err(), Some(FramingError::ChunkSize));
    }
}

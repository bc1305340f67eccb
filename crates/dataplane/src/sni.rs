//! Reading the server name (SNI) out of a TLS ClientHello, without terminating TLS.
//!
//! TLS passthrough routes a connection by the SNI of its first message, so the data plane
//! has to read the ClientHello that it then forwards untouched. This is a small parser of our
//! own rather than a crate: rustls's `Acceptor` consumes the bytes and applies rustls's own
//! policy to the hello (a passthrough backend may accept what rustls would not), and
//! `tls-parser` parses all of TLS with nom to answer one question. Here, the parser only walks
//! the length-prefixed structure down to the `server_name` extension:
//!
//! - TLSPlaintext records (RFC 8446 §5.1): type `handshake` (22), version `3.x`, a length of
//!   at most 2^14. A ClientHello may be split over several records; their payloads are
//!   joined.
//! - Handshake (RFC 8446 §4): type `client_hello` (1) and a 24-bit length.
//! - ClientHello (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2): version, random, session id, cipher
//!   suites, compression methods, then extensions (optional before TLS 1.2).
//! - `server_name` (RFC 6066 §3): a list of names, of which the `host_name` one is used.
//!
//! [`parse`] is a pure function of a byte slice that never panics, so it can be called again
//! as more bytes arrive and fed anything by tests (including proptest).

use ir::Hostname;

/// Handshake messages larger than this are refused. Real ClientHellos are far smaller (a few
/// hundred bytes; about 1.9 KiB with a post-quantum key share), and one TLS record holds at
/// most 16 KiB.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// The record content type of handshake messages.
const CONTENT_HANDSHAKE: u8 = 22;
/// The handshake type of a ClientHello.
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// The extension type of `server_name`.
const EXTENSION_SERVER_NAME: u16 = 0;
/// The `name_type` of a DNS host name in the `server_name` extension.
const NAME_TYPE_HOST_NAME: u8 = 0;
/// "The length MUST NOT exceed 2^14 bytes" (RFC 8446 §5.1).
const MAX_RECORD_PAYLOAD: usize = 1 << 14;
/// Handshake header: type, 24-bit length.
const HANDSHAKE_HEADER: usize = 4;

/// The outcome of parsing the bytes received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes are a valid beginning of a ClientHello; more are needed.
    Incomplete,
    /// A complete ClientHello.
    Complete {
        /// The `host_name` of its `server_name` extension, normalised like a request host
        /// (lowercase, without a trailing dot); `None` when the client sent no SNI.
        server_name: Option<Hostname>,
    },
}

/// Why the bytes are not a ClientHello we can route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidClientHello {
    /// The first record is not a TLS handshake record (plain HTTP, SSLv2, a scanner).
    #[error("not a TLS handshake record")]
    NotTls,
    /// A record announces an empty or over-long payload.
    #[error("TLS record length out of range")]
    RecordLength,
    /// The first handshake message is not a ClientHello.
    #[error("first handshake message is not a ClientHello")]
    NotClientHello,
    /// The ClientHello announces more than [`MAX_CLIENT_HELLO`] bytes.
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    /// A length field does not fit the message, or a field breaks its own rules.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The `server_name` extension holds a host name that is not a DNS name.
    #[error("SNI is not a valid host name")]
    InvalidServerName,
}

/// Parses the first bytes a client sent on a connection.
///
/// Returns [`Parsed::Incomplete`] while every byte so far is a valid prefix of a ClientHello,
/// so that a caller can read more and call again; an error as soon as one is not. Bytes after
/// the ClientHello (early data, say) are ignored.
pub fn parse(received: &[u8]) -> Result<Parsed, InvalidClientHello> {
    let mut records = received;
    let mut message: Vec<u8> = Vec::new();
    loop {
        let Some(payload) = next_record(&mut records)? else {
            return Ok(Parsed::Incomplete);
        };
        message.extend_from_slice(payload);
        let mut handshake = Reader::new(&message);
        match handshake.u8() {
            Some(HANDSHAKE_CLIENT_HELLO) => {}
            Some(_) => return Err(InvalidClientHello::NotClientHello),
            None => continue,
        }
        let Some(length) = handshake.u24() else {
            continue;
        };
        if length + HANDSHAKE_HEADER > MAX_CLIENT_HELLO {
            return Err(InvalidClientHello::TooLarge);
        }
        if let Some(body) = handshake.take(length) {
            let server_name = client_hello_server_name(body)?;
            return Ok(Parsed::Complete { server_name });
        }
    }
}

/// Takes the payload of the next complete handshake record off `records`; `None` when the
/// record is not complete yet. Header fields are checked as soon as they arrive.
fn next_record<'a>(records: &mut &'a [u8]) -> Result<Option<&'a [u8]>, InvalidClientHello> {
    let mut reader = Reader::new(records);
    match reader.u8() {
        Some(CONTENT_HANDSHAKE) => {}
        Some(_) => return Err(InvalidClientHello::NotTls),
        None => return Ok(None),
    }
    match reader.u8() {
        // `legacy_record_version`: 3.1 in practice, anything 3.x from old clients.
        Some(3) => {}
        Some(_) => return Err(InvalidClientHello::NotTls),
        None => return Ok(None),
    }
    if reader.u8().is_none() {
        return Ok(None);
    }
    let Some(length) = reader.u16().map(usize::from) else {
        return Ok(None);
    };
    // "Implementations MUST NOT send zero-length fragments of Handshake types" (§5.1).
    if length == 0 || length > MAX_RECORD_PAYLOAD {
        return Err(InvalidClientHello::RecordLength);
    }
    let Some(payload) = reader.take(length) else {
        return Ok(None);
    };
    *records = reader.rest();
    Ok(Some(payload))
}

/// Walks a complete ClientHello body to its `server_name` extension.
fn client_hello_server_name(body: &[u8]) -> Result<Option<Hostname>, InvalidClientHello> {
    use InvalidClientHello::Malformed;
    let mut hello = Reader::new(body);
    hello.take(2).ok_or(Malformed("version"))?;
    hello.take(32).ok_or(Malformed("random"))?;
    let session_id = hello.u8_prefixed().ok_or(Malformed("session id"))?;
    if session_id.len() > 32 {
        return Err(Malformed("session id"));
    }
    let suites = hello.u16_prefixed().ok_or(Malformed("cipher suites"))?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Malformed("cipher suites"));
    }
    let compression = hello
        .u8_prefixed()
        .ok_or(Malformed("compression methods"))?;
    if compression.is_empty() {
        return Err(Malformed("compression methods"));
    }
    if hello.is_empty() {
        // A hello without extensions (SSL 3.0 to TLS 1.1 allow it) has no SNI.
        return Ok(None);
    }
    let mut extensions = Reader::new(hello.u16_prefixed().ok_or(Malformed("extensions"))?);
    if !hello.is_empty() {
        return Err(Malformed("bytes after the extensions"));
    }
    let mut server_name = None;
    while !extensions.is_empty() {
        let kind = extensions.u16().ok_or(Malformed("extension type"))?;
        let data = extensions.u16_prefixed().ok_or(Malformed("extension"))?;
        if kind != EXTENSION_SERVER_NAME {
            continue;
        }
        // "There MUST NOT be more than one extension of the same type" (RFC 8446 §4.2).
        if server_name.is_some() {
            return Err(Malformed("two server_name extensions"));
        }
        server_name = Some(host_name(data)?);
    }
    Ok(server_name.flatten())
}

/// The `host_name` entry of a `server_name` extension's `ServerNameList`. Entries of other
/// name types (none are defined) are skipped.
fn host_name(extension: &[u8]) -> Result<Option<Hostname>, InvalidClientHello> {
    use InvalidClientHello::Malformed;
    let mut data = Reader::new(extension);
    let mut list = Reader::new(data.u16_prefixed().ok_or(Malformed("server name list"))?);
    if !data.is_empty() || list.is_empty() {
        return Err(Malformed("server name list"));
    }
    let mut found = None;
    while !list.is_empty() {
        let name_type = list.u8().ok_or(Malformed("server name type"))?;
        let name = list.u16_prefixed().ok_or(Malformed("server name"))?;
        if name_type != NAME_TYPE_HOST_NAME {
            continue;
        }
        // "The ServerNameList MUST NOT contain more than one name of the same name_type"
        // (RFC 6066 §3).
        if found.is_some() {
            return Err(Malformed("two host names"));
        }
        found = Some(validate_host_name(name)?);
    }
    Ok(found)
}

/// "The hostname is represented as a byte string using ASCII encoding without a trailing
/// dot" (RFC 6066 §3). Letters, digits, `-`, `.` and `_` (common in internal names) are
/// accepted; a trailing dot is tolerated and removed, as for request hosts.
fn validate_host_name(name: &[u8]) -> Result<Hostname, InvalidClientHello> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    let name = std::str::from_utf8(name)
        .ok()
        .filter(|_| valid)
        .ok_or(InvalidClientHello::InvalidServerName)?;
    Hostname::from_request_host(name).ok_or(InvalidClientHello::InvalidServerName)
}

/// A cursor over big-endian, length-prefixed TLS structures. Every read returns `None`
/// instead of reading past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if count > self.bytes.len() {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    fn u8_prefixed(&mut self) -> Option<&'a [u8]> {
        let length = self.u8()?;
        self.take(usize::from(length))
    }

    fn u16_prefixed(&mut self) -> Option<&'a [u8]> {
        let length = self.u16()?;
        self.take(usize::from(length))
    }
}

#[cfg(test)]
mod tests;

//! Entry points for the fuzz targets in `fuzz/`: the parsers of this crate that read
//! untrusted bytes, reachable from outside without making them part of the API.

/// The SNI peek parser on the first bytes of a connection.
pub fn client_hello(data: &[u8]) {
    let _ = crate::sni::parse(data);
}

/// The egress proxy's reading of a request head: `METHOD TARGET` on the first line, then
/// headers as `name: value` lines.
pub fn proxy_request(text: &str) {
    let mut lines = text.split('\n');
    let Some((method, target)) = lines.next().and_then(|l| l.split_once(' ')) else {
        return;
    };
    let mut request = http::Request::builder().method(method).uri(target);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            request = request.header(name, value.trim());
        }
    }
    if let Ok(request) = request.body(()) {
        let _ = crate::egress::listeners::proxy_target(&request);
    }
}

/// The direct exchange's reading of an upstream response: the head, then a chunked body.
pub fn upstream_response(data: &[u8]) {
    use crate::forward::h1;
    let mut buffer = bytes::BytesMut::from(data);
    if let Ok(h1::Parsed::Complete(_)) = h1::parse_response(&mut buffer, &http::Method::GET) {
        let mut decoder = h1::Chunked::default();
        while let Ok(h1::Decoded::Data(_)) = decoder.decode(&mut buffer) {}
    }
}

//! Any text as an egress proxy request head (a CONNECT authority or an absolute-form target,
//! then headers) and as a request host: parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        dataplane::fuzzing::proxy_request(text);
        let _ = ir::Hostname::from_request_host(text);
    }
});

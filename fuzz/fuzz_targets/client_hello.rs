//! Any bytes as the start of a TLS connection: the SNI peek parser answers (need more, a
//! server name or none, or invalid) and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dataplane::fuzzing::client_hello(data);
});

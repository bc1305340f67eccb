//! Any bytes as an upstream's answer to a GET on the direct exchange: the response head
//! parses or is an error, a chunked body decodes or is an error, and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dataplane::fuzzing::upstream_response(data);
});

//! Any bytes as a manifest file: decoding reports errors or objects, and translating what
//! decoded never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(contents) = model::decode::decode_file(std::path::Path::new("fuzz.yaml"), text) else {
        return;
    };
    let snapshot =
        model::Snapshot::from_objects(contents.objects.into_iter().map(|(object, _)| object));
    let _ = translate::translate(&snapshot, &translate::Options::default());
});

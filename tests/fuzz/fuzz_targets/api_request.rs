//! A gRPC request message (first byte: which one; the rest: its protobuf encoding), decoded,
//! validated and converted as its handler does (`lobby_service::fuzzing::api_request`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lobby_service::fuzzing::api_request(data);
});

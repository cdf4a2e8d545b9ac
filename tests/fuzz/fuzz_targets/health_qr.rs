//! A health-code QR text: verified as sent, and its bytes verified as a signed payload
//! (`lobby_service::fuzzing::health_qr`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lobby_service::fuzzing::health_qr(data);
});

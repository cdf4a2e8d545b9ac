//! A reservation-import CSV (`lobby reservations import`): parsed, and each row's reservation
//! converted as the service converts an upsert (`lobby_kiosk_client::import::parse_bytes`,
//! `lobby_service::fuzzing::reservation`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = lobby_kiosk_client::import::parse_bytes(data) {
        for (_, row) in parsed.rows {
            let _ = lobby_service::fuzzing::reservation(row.reservation);
        }
    }
});

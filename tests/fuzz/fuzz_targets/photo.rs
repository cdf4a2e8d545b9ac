//! A photo as the service receives it: decoded with the service's decoder and a 256x256-pixel limit,
//! and one input in 1024 (`fuzzing::ANALYSE_ONE_IN`) also through the whole face pipeline as an
//! enrolment photo (`lobby_service::fuzzing::photo`).
//! Models: installed into `LOBBY_MODEL_DIR` (default `target/lobby-test-models`) from
//! `LOBBY_MODEL_MIRROR` (default `../shared/models`), as the test suite does.
//!
//! Panics: the service contains a panic of the image decoders (`vision/decode.rs` catches it and
//! answers `UndecodableImage`, INVALID_ARGUMENT), which libfuzzer-sys' panic hook would still turn
//! into an abort. Here the hook reports every panic (message and place, and a
//! `lobby-fuzz: panic` line that `run.sh` counts) without aborting; a panic that the service does
//! not contain still unwinds out of the entry point, where libfuzzer-sys catches it and aborts: a
//! crash, as in the other targets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lobby_models::{ensure, Source};
use lobby_service::fuzzing;
use lobby_service::vision::Vision;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn vision() -> &'static Vision {
    static VISION: OnceLock<Vision> = OnceLock::new();
    VISION.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = std::env::var_os("LOBBY_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/lobby-test-models"));
        let mirror = std::env::var_os("LOBBY_MODEL_MIRROR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("../shared/models"));
        let paths = ensure(&dir, &Source::Mirror(mirror)).expect("models install from the mirror");
        fuzzing::photo_vision(&paths).expect("models load")
    })
}

fuzz_target!(
    init: {
        // libfuzzer-sys' hook (report, then abort) out; the standard one (report) in its place.
        drop(std::panic::take_hook());
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            eprintln!("lobby-fuzz: panic (contained by the service unless a crash follows)");
        }));
        // The first analysis pays for lazy set-up (tens of seconds under ASan): not in any input's
        // time, so that -timeout stays meaningful.
        let warm_up = include_bytes!("../seeds/photo/face_cartoon.png");
        fuzzing::photo_analysed(vision(), warm_up).expect("the cartoon seed analyses");
    },
    |data: &[u8]| {
        let _ = fuzzing::photo(vision(), data);
    }
);

//! The server under test: `lobby_service::server::run` in this process on 127.0.0.1:0, with its own
//! data directory and credentials; and the process's RSS.

use super::*;

pub(crate) struct Server {
    pub(crate) addr: String,
    pub(crate) kiosk_tokens: Vec<String>,
    pub(crate) kiosk_ids: Vec<String>,
    pub(crate) staff: String,
    pub(crate) enroller: String,
    pub(crate) loopback: lobby_service::server::Loopback,
    pub(crate) dir: PathBuf,
    pub(crate) settings_note: String,
}

pub(crate) async fn start(args: &Args, props: &[String]) -> Result<Server> {
    let mut settings = Settings::load_from(None, std::iter::empty())?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/lobby-soak")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    settings.data_dir = dir.clone();
    let l = &settings.limits;
    let settings_note = format!(
        "embedded defaults: max_concurrent_analyses {}, queue_wait_ms {}, kiosk_frames_per_minute {} (burst {}), max_streams_per_caller {}, check_in_stream_secs {}",
        l.max_concurrent_analyses,
        l.queue_wait_ms,
        l.kiosk_frames_per_minute,
        l.kiosk_frame_burst,
        l.max_streams_per_caller,
        l.check_in_stream_secs
    );
    let model_dir = args.models.clone().unwrap_or_else(default_model_dir);
    let paths = ensure(&model_dir, &Source::from_env())?;
    let vision = Arc::new(Vision::load(&paths, App::vision_config(&settings))?);
    let entry = |id: String, role, t: &str, p: Option<String>| TokenEntry {
        id,
        role,
        sha256: hex_digest(&hash_token(t)),
        property: p,
    };
    let (enroller, staff_token) = (new_token(), new_token());
    let kiosk_tokens: Vec<String> = (0..args.kiosks).map(|_| new_token()).collect();
    let kiosk_ids: Vec<String> = (0..args.kiosks).map(|i| format!("soak-kiosk-{i:02}")).collect();
    let mut entries = vec![
        entry("soak-pms".into(), Role::Enroller, &enroller, None),
        entry("soak-staff".into(), Role::Staff, &staff_token, None),
    ];
    for (i, t) in kiosk_tokens.iter().enumerate() {
        entries.push(entry(
            kiosk_ids[i].clone(),
            Role::Kiosk,
            t,
            Some(props[i % props.len()].clone()),
        ));
    }
    let creds = Credentials::new(&entries).map_err(anyhow::Error::msg)?;
    let app = Arc::new(App::start(settings, vision).await?);
    let loopback = lobby_service::server::Loopback::start(app, Arc::new(creds)).await?;
    let addr = loopback.addr.clone();
    Ok(Server {
        addr,
        kiosk_tokens,
        kiosk_ids,
        staff: staff_token,
        enroller,
        loopback,
        dir,
        settings_note,
    })
}

/// A field of `/proc/self/status` (its first number: kB for memory, a count for `Threads`).
fn proc_status(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// The process's resident memory (server and clients), MiB.
pub(crate) fn rss_mib() -> f64 {
    proc_status("VmRSS") / 1024.0
}

/// The process's peak resident memory, MiB.
pub(crate) fn hwm_mib() -> f64 {
    proc_status("VmHWM") / 1024.0
}

/// The process's threads (the server's runtime, blocking pool and analysis threads; the clients').
pub(crate) fn threads() -> f64 {
    proc_status("Threads")
}

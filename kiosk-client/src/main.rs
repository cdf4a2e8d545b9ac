//! `lobby`: command line for kiosks, front-desk staff and reservation systems.
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use lobby_kiosk_client::ladder::ScriptedGuest;
use lobby_kiosk_client::{connect_with, kiosk, proto as pv, reservations, staff, Tls};
use std::path::{Path, PathBuf};
use tokio_stream::StreamExt;

mod cli;
use cli::import::import;
use cli::output::{print_checkin, print_decision};
use cli::terminal::TerminalGuest;

#[derive(Parser)]
#[command(
    name = "lobby",
    version,
    about = "Lobby check-in client: kiosk, front-desk staff, reservation systems"
)]
struct Cli {
    /// Server address.
    #[arg(long, global = true, env = "LOBBY_ADDR", default_value = "127.0.0.1:50051")]
    addr: String,
    /// Bearer token for the role used [or --token-file, env LOBBY_TOKEN].
    #[arg(long, global = true, env = "LOBBY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the token (first line, or the line `ROLE=TOKEN` for this role).
    #[arg(long, global = true, env = "LOBBY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// TLS: the CA certificate (PEM) that signed the server's; connects with https.
    #[arg(long, global = true, env = "LOBBY_CA")]
    ca: Option<PathBuf>,
    /// Mutual TLS: this client's certificate (PEM), e.g. the kiosk's.
    #[arg(long, global = true, env = "LOBBY_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// Mutual TLS: this client's private key (PEM).
    #[arg(long, global = true, env = "LOBBY_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// The name on the server's certificate, when it differs from the address's host.
    #[arg(long, global = true, env = "LOBBY_TLS_DOMAIN")]
    tls_domain: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Lobby kiosk (role kiosk).
    Kiosk {
        #[command(subcommand)]
        cmd: KioskCmd,
    },
    /// Front-desk staff (role staff).
    Staff {
        #[command(subcommand)]
        cmd: StaffCmd,
    },
    /// Reservation system (role enroller).
    Reservations {
        #[command(subcommand)]
        cmd: ResCmd,
    },
    /// Audit bundles, offline: no server, no database.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Shell completions for this command, on stdout (e.g. `lobby completions bash >
    /// /etc/bash_completion.d/lobby`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify an exported audit bundle (`lobby staff export-audit`) against the server's public key:
    /// every checkpoint's signature, every entry's hash and link, the chain through every signed
    /// head. Exit status 1 when it does not hold.
    Verify {
        bundle: PathBuf,
        /// The server's audit public key (base64, as printed at start), or the `.pub` file holding it.
        #[arg(long)]
        public_key: String,
    },
}

#[derive(Subcommand)]
enum KioskCmd {
    /// Check a guest in from one photo.
    CheckIn {
        photo: PathBuf,
        /// Reservation code for 1:1 matching (otherwise 1:N over today's arrivals).
        #[arg(long)]
        reservation: Option<String>,
        /// File with the health-code QR text.
        #[arg(long)]
        qr: Option<PathBuf>,
    },
    /// The guest declines face check-in: no photo is taken; the front desk checks them in (REVIEW,
    /// FACE_DECLINED).
    Decline {
        /// The guest's reservation code, if they have it (tells the desk which booking).
        #[arg(long)]
        reservation: Option<String>,
    },
    /// Check a guest in through the stream, climbing the escalation ladder. Frames are the photos
    /// given (files, or a folder's photos in name order); the last is shown again while the server
    /// needs more. Asked for the booking code: --code-on-ask, --booking-qr, or a prompt on the
    /// terminal (empty: the guest has none and goes to the desk). Asked to lower the mask:
    /// --unmasked photos, or a prompt for a photo's path (empty: the mask stays on).
    Stream {
        #[arg(required = true)]
        photos: Vec<PathBuf>,
        /// Reservation code given from the first frame (1:1 from the start).
        #[arg(long)]
        reservation: Option<String>,
        /// The code the guest types when the server asks for it.
        #[arg(long)]
        code_on_ask: Option<String>,
        /// File with the booking QR's text (the reservation code), scanned when the server asks.
        #[arg(long, conflicts_with = "code_on_ask")]
        booking_qr: Option<PathBuf>,
        /// Photos of the guest with the mask lowered, shown when the server asks.
        #[arg(long)]
        unmasked: Vec<PathBuf>,
        /// File with the health-code QR text.
        #[arg(long)]
        qr: Option<PathBuf>,
        /// Frames sent at most.
        #[arg(long, default_value_t = 20)]
        max_frames: usize,
    },
}

#[derive(Subcommand)]
enum StaffCmd {
    /// Follow decisions needing review (pending first, then new ones).
    Reviews {
        #[arg(long)]
        property: Option<String>,
    },
    /// Approve or deny a decision.
    Override {
        decision_id: String,
        #[arg(long, conflicts_with = "deny", required_unless_present = "deny")]
        approve: bool,
        #[arg(long)]
        deny: bool,
        #[arg(long)]
        reason: String,
    },
    /// Show one decision.
    Decision { decision_id: String },
    /// Verify the audit trail's hash chain.
    VerifyAudit,
    /// Write the whole audit trail, its signed checkpoints and the server's public key to FILE, for
    /// `lobby audit verify` offline.
    ExportAudit { file: PathBuf },
}

#[derive(Subcommand)]
enum ResCmd {
    /// Import reservations from CSV and enrol faces: columns property,reservation_code,full_name,
    /// guest_ref,arrival,departure,consent,photos (photos separated by ';', relative to the CSV;
    /// faces are enrolled only where consent is "yes").
    Import {
        csv: PathBuf,
        #[arg(long, default_value = "booking-form")]
        consent_method: String,
        #[arg(long, default_value = "v1")]
        consent_version: String,
    },
    /// Show a reservation.
    Get { property: String, reservation: String },
    /// Set a guest's health-code status.
    Health {
        property: String,
        reservation: String,
        /// GREEN, YELLOW, RED or UNKNOWN.
        #[arg(long)]
        colour: String,
        /// Hours of validity from now.
        #[arg(long, default_value_t = 24)]
        valid_hours: i64,
        #[arg(long, default_value = "pms")]
        source: String,
    },
    /// Erase a guest: templates deleted, personal fields cleared.
    Erase {
        property: String,
        reservation: String,
        #[arg(long)]
        reason: String,
    },
}

fn token(cli: &Cli, role: &str) -> Result<String> {
    if let Some(t) = &cli.token {
        return Ok(t.clone());
    }
    if let Some(f) = &cli.token_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let prefix = format!("{role}=");
        let line = text.lines().find_map(|l| l.strip_prefix(&prefix)).or_else(|| {
            text.lines()
                .find(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.contains('='))
        });
        return line
            .map(|l| l.trim().to_string())
            .context("no token for this role in the token file");
    }
    bail!("give --token, --token-file or LOBBY_TOKEN")
}

fn read_qr(p: &Option<PathBuf>) -> Result<String> {
    Ok(match p {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading {}", p.display()))?
            .trim()
            .to_string(),
        None => String::new(),
    })
}

/// The bytes of the photos named (a folder stands for its files, in name order).
fn read_photos(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for p in paths {
        let files = if p.is_dir() { photo_files(p)? } else { vec![p.clone()] };
        for f in files {
            out.push(std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?);
        }
    }
    Ok(out)
}

fn photo_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Completions { shell } = cli.cmd {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "lobby", &mut std::io::stdout());
        return Ok(());
    }
    let tls = Tls {
        ca: cli.ca.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
        domain: cli.tls_domain.clone(),
    };
    if let Cmd::Audit {
        cmd: AuditCmd::Verify { bundle, public_key },
    } = &cli.cmd
    {
        let v = lobby_kiosk_client::audit::verify_file(bundle, public_key)?;
        match &v.first_broken {
            None => println!(
                "intact: {} entries, {} signed checkpoints passed",
                v.entries, v.checkpoints
            ),
            Some((seq, why)) => {
                println!("BROKEN at entry {seq}: {why} ({} entries read)", v.entries);
                std::process::exit(1);
            }
        }
        return Ok(());
    }
    let ch = connect_with(&cli.addr, &tls)
        .await
        .with_context(|| format!("connecting to {}", cli.addr))?;
    match &cli.cmd {
        Cmd::Kiosk { cmd } => {
            let mut c = kiosk(ch, &token(&cli, "kiosk")?)?;
            match cmd {
                KioskCmd::CheckIn { photo, reservation, qr } => {
                    let bytes = std::fs::read(photo).with_context(|| format!("reading {}", photo.display()))?;
                    let t = std::time::Instant::now();
                    let r = c
                        .check_in(pv::CheckInRequest {
                            photo: bytes,
                            reservation_code: reservation.clone().unwrap_or_default(),
                            health_qr: read_qr(qr)?,
                            guest_declines_face: false,
                        })
                        .await?
                        .into_inner();
                    print_checkin(&r);
                    println!("client    {:.1} ms round trip", t.elapsed().as_secs_f64() * 1000.0);
                }
                KioskCmd::Decline { reservation } => {
                    let r = c
                        .check_in(pv::CheckInRequest {
                            photo: Vec::new(),
                            reservation_code: reservation.clone().unwrap_or_default(),
                            health_qr: String::new(),
                            guest_declines_face: true,
                        })
                        .await?
                        .into_inner();
                    print_checkin(&r);
                }
                KioskCmd::Stream {
                    photos,
                    reservation,
                    code_on_ask,
                    booking_qr,
                    unmasked,
                    qr,
                    max_frames,
                } => {
                    let qr = read_qr(qr)?;
                    let code_on_ask = match booking_qr {
                        Some(_) => Some(read_qr(booking_qr)?),
                        None => code_on_ask.clone(),
                    };
                    let mut guest = TerminalGuest {
                        script: ScriptedGuest::new(read_photos(photos)?, read_photos(unmasked)?, code_on_ask),
                    };
                    let run =
                        lobby_kiosk_client::ladder::drive(&mut c, &mut guest, reservation.clone(), &qr, *max_frames)
                            .await?;
                    for (n, a) in run.answers.iter().enumerate() {
                        println!("-- answer {}", n + 1);
                        print_checkin(a);
                    }
                    println!(
                        "-- {} frames sent; ladder steps asked: {}{}",
                        run.frames_sent,
                        if run.steps.is_empty() {
                            "none".to_string()
                        } else {
                            run.steps
                                .iter()
                                .map(|s| s.as_str_name().trim_start_matches("REASON_"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                        if run.closed_by_kiosk {
                            "; the kiosk closed the stream (guest to the desk)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        Cmd::Staff { cmd } => {
            let mut c = staff(ch, &token(&cli, "staff")?)?;
            match cmd {
                StaffCmd::Reviews { property } => {
                    let mut s = c
                        .stream_reviews(pv::StreamReviewsRequest {
                            property_id: property.clone().unwrap_or_default(),
                        })
                        .await?
                        .into_inner();
                    while let Some(d) = s.next().await {
                        print_decision(&d?);
                    }
                }
                StaffCmd::Override {
                    decision_id,
                    approve,
                    deny: _,
                    reason,
                } => {
                    let action = if *approve {
                        pv::OverrideAction::Approve
                    } else {
                        pv::OverrideAction::Deny
                    };
                    let d = c
                        .override_decision(pv::OverrideDecisionRequest {
                            decision_id: decision_id.clone(),
                            action: action as i32,
                            reason: reason.clone(),
                        })
                        .await?
                        .into_inner();
                    print_decision(&d);
                }
                StaffCmd::Decision { decision_id } => {
                    let d = c
                        .get_decision(pv::GetDecisionRequest {
                            decision_id: decision_id.clone(),
                        })
                        .await?
                        .into_inner();
                    print_decision(&d);
                }
                StaffCmd::ExportAudit { file } => {
                    let (entries, checkpoints) = lobby_kiosk_client::audit::export(&mut c, file).await?;
                    eprintln!(
                        "wrote {} entries and {checkpoints} signed checkpoints to {}",
                        entries,
                        file.display()
                    );
                }
                StaffCmd::VerifyAudit => {
                    let v = c.verify_audit_trail(pv::VerifyAuditTrailRequest {}).await?.into_inner();
                    println!("intact {}  entries {}  {}", v.intact, v.entries, v.detail);
                    if !v.intact {
                        std::process::exit(1);
                    }
                }
            }
        }
        Cmd::Audit { .. } | Cmd::Completions { .. } => unreachable!("answered before connecting"),
        Cmd::Reservations { cmd } => {
            let mut c = reservations(ch, &token(&cli, "enroller")?)?;
            match cmd {
                ResCmd::Import {
                    csv,
                    consent_method,
                    consent_version,
                } => {
                    import(&mut c, csv, consent_method, consent_version).await?;
                }
                ResCmd::Get { property, reservation } => {
                    let r = c
                        .get_reservation(pv::GetReservationRequest {
                            property_id: property.clone(),
                            reservation_code: reservation.clone(),
                        })
                        .await?
                        .into_inner();
                    println!("{r:#?}");
                }
                ResCmd::Health {
                    property,
                    reservation,
                    colour,
                    valid_hours,
                    source,
                } => {
                    let colour = match colour.to_ascii_uppercase().as_str() {
                        "GREEN" => pv::HealthColour::Green,
                        "YELLOW" => pv::HealthColour::Yellow,
                        "RED" => pv::HealthColour::Red,
                        "UNKNOWN" => pv::HealthColour::Unknown,
                        other => bail!("unknown colour {other}"),
                    };
                    let now = chrono::Utc::now().timestamp_millis();
                    let r = c
                        .update_health_code(pv::UpdateHealthCodeRequest {
                            property_id: property.clone(),
                            reservation_code: reservation.clone(),
                            status: Some(pv::HealthStatus {
                                colour: colour as i32,
                                issued_at_ms: now,
                                expires_at_ms: now + valid_hours * 3_600_000,
                                source: source.clone(),
                            }),
                        })
                        .await?
                        .into_inner();
                    println!("{} health {}", r.reservation_code, colour.as_str_name());
                }
                ResCmd::Erase {
                    property,
                    reservation,
                    reason,
                } => {
                    let r = c
                        .erase_guest(pv::EraseGuestRequest {
                            property_id: property.clone(),
                            reservation_code: reservation.clone(),
                            reason: reason.clone(),
                        })
                        .await?
                        .into_inner();
                    println!("erased guest {}: {} templates deleted", r.guest_id, r.templates_deleted);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod completion_tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn the_command_is_well_formed_and_every_shell_completes_it() {
        Cli::command().debug_assert();
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lobby", &mut out);
            let text = String::from_utf8(out).unwrap();
            for sub in ["check-in", "reviews", "import", "export-audit", "completions"] {
                assert!(text.contains(sub), "{shell}: {sub} missing");
            }
        }
    }
}

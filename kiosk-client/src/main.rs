//! `lobby`: command line for kiosks, front-desk staff and reservation systems.
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "lobby",
    version,
    about = "Lobby check-in client (kiosk, staff, reservations)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    Ok(())
}

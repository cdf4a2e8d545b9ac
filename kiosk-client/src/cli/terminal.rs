//! `lobby kiosk stream` on a terminal: the scripted guest, asking for what the script does not say.

use lobby_kiosk_client::ladder::{KioskGuest, ScriptedGuest};

/// The scripted guest, asking on the terminal for what the script does not say.
pub struct TerminalGuest {
    pub script: ScriptedGuest,
}

fn prompt(question: &str) -> Option<String> {
    use std::io::{IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return None;
    }
    print!("{question} ");
    std::io::stdout().flush().ok()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).ok()?;
    Some(line.trim().to_string()).filter(|l| !l.is_empty())
}

impl KioskGuest for TerminalGuest {
    fn frame(&mut self) -> Option<Vec<u8>> {
        self.script.frame()
    }

    fn reservation_code(&mut self) -> Option<String> {
        self.script
            .reservation_code()
            .or_else(|| prompt("The kiosk asks for the booking code (scan or type it; empty: none, go to the desk):"))
    }

    fn lower_mask(&mut self) -> bool {
        if self.script.lower_mask() {
            return true;
        }
        match prompt("The kiosk asks the guest to lower the mask: path of a photo without it (empty: keep it on):") {
            Some(path) => match std::fs::read(&path) {
                Ok(bytes) => {
                    self.script.unmasked = vec![bytes];
                    self.script.lower_mask()
                }
                Err(e) => {
                    eprintln!("cannot read {path}: {e}");
                    false
                }
            },
            None => false,
        }
    }
}

//! What the clients wrote and what the server acknowledged, per reservation and per decision.
//!
//! Each reservation belongs to one client, which sends its writes one at a time, so its writes
//! have an order. A write is *acknowledged* (the answer came), or *unsure* (the kill cut it, or an
//! error came that does not say whether it was committed): its effect may or may not be there.
//! Writes answered with "nothing done" (RESOURCE_EXHAUSTED, FAILED_PRECONDITION, an enrolment whose
//! photo was refused) are not kept. What a field may read back after the restart is then the value
//! of its last acknowledged write or of any unsure write after it ([`Booking::possible`]).

use lobby_kiosk_client::proto as pv;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A write to a reservation.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// UpsertReservation: this guest name, status BOOKED (the dates never change).
    Upsert { name: String },
    /// UpdateHealthCode.
    Health { colour: i32, issued_at_ms: i64 },
    /// EnrollFace that stored templates: the clean ones it reported, and every kind as
    /// GetReservation counted them right after it was acknowledged (when that read was answered).
    Enrol { clean: u32, total: Option<u32> },
    /// An APPROVED check-in or an APPROVE override: CHECKED_IN.
    CheckedIn,
    /// EraseGuest.
    Erase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    Acknowledged,
    Unsure,
}

/// A reservation of the trial and every write sent to it, in order.
#[derive(Debug, Clone)]
pub struct Booking {
    pub prop: usize,
    pub code: String,
    pub arrival: String,
    pub departure: String,
    /// The photo every enrolment of this reservation sends (the index check probes with it).
    pub photo: PathBuf,
    pub writes: Vec<(Write, Ack)>,
}

impl Booking {
    /// The values a field may read back: `pick` says which writes set it and to what. `None` in
    /// the answer: never set (possible until a write that sets it is acknowledged).
    pub fn possible<T: PartialEq>(&self, pick: impl Fn(&Write) -> Option<T>) -> Vec<Option<T>> {
        let mut v: Vec<Option<T>> = vec![None];
        for (w, ack) in &self.writes {
            if let Some(x) = pick(w) {
                match ack {
                    Ack::Acknowledged => v = vec![Some(x)],
                    Ack::Unsure => {
                        let x = Some(x);
                        if !v.contains(&x) {
                            v.push(x);
                        }
                    }
                }
            }
        }
        v
    }

    /// Some write of this kind was acknowledged.
    pub fn acknowledged(&self, is: impl Fn(&Write) -> bool) -> bool {
        self.writes.iter().any(|(w, a)| *a == Ack::Acknowledged && is(w))
    }

    /// Some write of this kind was sent, acknowledged or not.
    pub fn sent(&self, is: impl Fn(&Write) -> bool) -> bool {
        self.writes.iter().any(|(w, _)| is(w))
    }
}

/// A decision a kiosk was told about (the answer with its id came back).
#[derive(Debug, Clone)]
pub struct DecisionAck {
    pub id: String,
    /// The kiosk credential's holder, which the decision must name.
    pub kiosk: String,
    pub prop: usize,
    pub outcome: i32,
}

/// A staff override sent for a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct OverrideSent {
    pub action: i32,
    pub reason: String,
    pub staff: String,
    pub ack: Ack,
}

/// Acknowledged operations by kind, and the calls that wrote nothing or were cut.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// kind -> acknowledged
    pub acked: BTreeMap<&'static str, u64>,
    /// Calls the kill cut (their effect may or may not be there).
    pub cut: u64,
    /// RESOURCE_EXHAUSTED answers (nothing done).
    pub busy: u64,
    /// Answered "nothing done" on purpose: an APPROVE override of a reservation no longer BOOKED
    /// (FAILED_PRECONDITION), an enrolment whose photo was refused.
    pub refused: u64,
}

impl Counts {
    pub fn ack(&mut self, kind: &'static str) {
        *self.acked.entry(kind).or_default() += 1;
    }

    pub fn merge(&mut self, o: &Counts) {
        for (k, n) in &o.acked {
            *self.acked.entry(k).or_default() += n;
        }
        self.cut += o.cut;
        self.busy += o.busy;
        self.refused += o.refused;
    }

    /// Acknowledged writes that each append an audit entry (every kind but reads).
    pub fn audited(&self) -> u64 {
        KINDS.iter().map(|k| self.acked.get(k).copied().unwrap_or(0)).sum()
    }
}

pub const K_UPSERT: &str = "upsert";
pub const K_HEALTH: &str = "health";
pub const K_ENROL: &str = "enrol";
pub const K_CHECK_IN: &str = "check-in";
pub const K_OVERRIDE: &str = "override";
pub const K_ERASE: &str = "erase";
/// Every kind of acknowledged operation, in report order.
pub const KINDS: [&str; 6] = [K_UPSERT, K_ENROL, K_HEALTH, K_CHECK_IN, K_OVERRIDE, K_ERASE];

/// Everything the clients of one trial sent, shared between them.
#[derive(Debug, Default)]
pub struct Ledger {
    /// reservation code -> booking (codes are unique in a trial)
    pub bookings: BTreeMap<String, Booking>,
    pub decisions: Vec<DecisionAck>,
    /// decision id -> the override sent for it (at most one per decision)
    pub overrides: BTreeMap<String, OverrideSent>,
    /// What the server did that no durability rule explains, seen during the load (an approval of
    /// the wrong guest, an error before the kill).
    pub anomalies: Vec<String>,
}

impl Ledger {
    pub fn write(&mut self, code: &str, w: Write, ack: Ack) {
        if let Some(b) = self.bookings.get_mut(code) {
            b.writes.push((w, ack));
        }
    }
}

/// `HEALTH_COLOUR_GREEN` -> `GREEN`.
pub fn colour_name(c: i32) -> &'static str {
    pv::HealthColour::try_from(c)
        .map(|c| c.as_str_name())
        .unwrap_or("HEALTH_COLOUR_UNKNOWN")
        .trim_start_matches("HEALTH_COLOUR_")
}

/// `RESERVATION_STATUS_BOOKED` -> `BOOKED`.
pub fn status_name(s: i32) -> &'static str {
    pv::ReservationStatus::try_from(s)
        .map(|s| s.as_str_name())
        .unwrap_or("RESERVATION_STATUS_UNSPECIFIED")
        .trim_start_matches("RESERVATION_STATUS_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booking(writes: Vec<(Write, Ack)>) -> Booking {
        Booking {
            prop: 0,
            code: "C".into(),
            arrival: String::new(),
            departure: String::new(),
            photo: PathBuf::new(),
            writes,
        }
    }

    fn name(w: &Write) -> Option<String> {
        match w {
            Write::Upsert { name } => Some(name.clone()),
            _ => None,
        }
    }

    fn up(n: &str, a: Ack) -> (Write, Ack) {
        (Write::Upsert { name: n.into() }, a)
    }

    #[test]
    fn the_last_acknowledged_write_and_any_unsure_one_after_it() {
        use Ack::*;
        assert_eq!(booking(vec![]).possible(name), vec![None]);
        assert_eq!(
            booking(vec![up("a", Unsure)]).possible(name),
            vec![None, Some("a".into())]
        );
        assert_eq!(
            booking(vec![up("a", Unsure), up("b", Acknowledged), up("c", Unsure)]).possible(name),
            vec![Some("b".into()), Some("c".into())]
        );
        assert_eq!(
            booking(vec![up("a", Acknowledged), (Write::Erase, Unsure)]).possible(name),
            vec![Some("a".into())]
        );
    }
}

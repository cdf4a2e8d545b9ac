//! The reservation-import CSV of `lobby reservations import`: parsed here, sent by the command.
//!
//! A header line names the columns (any order, extra columns ignored): `property`,
//! `reservation_code`, `full_name`, `guest_ref`, `arrival`, `departure` (`YYYY-MM-DD`, `today` or
//! `today+N`), `consent` (`yes` to enrol) and `photos` (`;`-separated paths relative to the CSV).
//! Blank lines are skipped; a missing cell is empty. The server validates every field.

use crate::proto as pv;
use anyhow::{Context, Result};

/// One CSV row: the reservation to upsert and, with consent, the photos to enrol.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRow {
    pub reservation: pv::Reservation,
    pub consent: bool,
    /// Photo paths as written (relative to the CSV's folder); empty entries dropped.
    pub photos: Vec<String>,
}

/// `today` or `today+N` as a date; anything else as written.
pub fn relative_date(s: &str) -> String {
    let today = chrono::Local::now().date_naive();
    match s.strip_prefix("today") {
        Some("") => today.to_string(),
        Some(rest) => match rest.strip_prefix('+').and_then(|n| n.parse::<u64>().ok()) {
            // Beyond the calendar (`today+99999999999`): as written, for the server to refuse.
            Some(n) => today
                .checked_add_days(chrono::Days::new(n))
                .map_or_else(|| s.to_string(), |d| d.to_string()),
            None => s.to_string(),
        },
        None => s.to_string(),
    }
}

/// Parses an import file's bytes (UTF-8, as `read_to_string` requires).
pub fn parse_bytes(bytes: &[u8]) -> Result<Vec<ImportRow>> {
    parse(std::str::from_utf8(bytes).context("the CSV is not UTF-8")?)
}

/// Parses an import file's text: the header, then one [`ImportRow`] per non-blank line.
pub fn parse(text: &str) -> Result<Vec<ImportRow>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().context("empty CSV")?.split(',').map(str::trim).collect();
    let col = |n: &str| {
        header
            .iter()
            .position(|h| *h == n)
            .with_context(|| format!("CSV column {n} missing"))
    };
    let (cp, cc, cn, cr, ca, cd, cs, cph) = (
        col("property")?,
        col("reservation_code")?,
        col("full_name")?,
        col("guest_ref")?,
        col("arrival")?,
        col("departure")?,
        col("consent")?,
        col("photos")?,
    );
    Ok(lines
        .map(|l| {
            let r: Vec<&str> = l.split(',').map(str::trim).collect();
            let get = |i: usize| r.get(i).copied().unwrap_or_default().to_string();
            ImportRow {
                reservation: pv::Reservation {
                    property_id: get(cp),
                    reservation_code: get(cc),
                    guest: Some(pv::Guest {
                        guest_id: String::new(),
                        full_name: get(cn),
                        guest_ref: get(cr),
                    }),
                    arrival_date: relative_date(&get(ca)),
                    departure_date: relative_date(&get(cd)),
                    status: pv::ReservationStatus::Booked as i32,
                    ..Default::default()
                },
                consent: get(cs).eq_ignore_ascii_case("yes"),
                photos: get(cph)
                    .split(';')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_by_header_name() {
        let csv = "photos, consent,property,reservation_code,full_name,guest_ref,arrival,departure\n\n\
                   a.jpg;;b.jpg,YES,p1,R-1,Ann Lee,G-1,2026-01-02,2026-01-03\n\
                   ,no,p1,R-2\n";
        let rows = parse(csv).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].photos, ["a.jpg", "b.jpg"]);
        assert!(rows[0].consent);
        assert_eq!(rows[0].reservation.arrival_date, "2026-01-02");
        assert_eq!(rows[0].reservation.guest.as_ref().unwrap().full_name, "Ann Lee");
        assert!(!rows[1].consent && rows[1].photos.is_empty());
        assert_eq!(rows[1].reservation.departure_date, "");
        assert!(parse("").is_err());
        assert!(parse("property,reservation_code\n").is_err());
        assert!(parse_bytes(b"\xff").is_err());
        assert_eq!(relative_date("today+x"), "today+x");
        // Found by fuzzing (csv_import): this panicked (`NaiveDate + Days` out of range).
        assert_eq!(relative_date("today+29999999999999"), "today+29999999999999");
    }
}

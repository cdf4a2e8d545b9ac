//! The reservation-import CSV of `lobby reservations import`: parsed here, sent by the command.
//!
//! A header line names the columns (any order, extra columns ignored): `property`,
//! `reservation_code`, `full_name`, `guest_ref`, `arrival`, `departure` (`YYYY-MM-DD`, `today` or
//! `today+N`), `consent` (`yes` to enrol) and `photos` (`;`-separated paths relative to the CSV).
//! Read with the `csv` crate: quoted fields (commas and quotes inside them), a UTF-8 byte-order
//! mark, CRLF line ends, rows shorter than the header (a missing cell is empty). Blank lines are
//! skipped. A row that cannot be read, or has no property or reservation code, is reported with its
//! line and the others are still imported; the server validates every field.

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

/// What an import file gave: the rows read, each with its line number, and the rows that could not
/// be used, each with its line number and why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub rows: Vec<(u64, ImportRow)>,
    pub bad: Vec<(u64, String)>,
}

/// Parses an import file's bytes (UTF-8).
pub fn parse_bytes(bytes: &[u8]) -> Result<Parsed> {
    parse(std::str::from_utf8(bytes).context("the CSV is not UTF-8")?)
}

/// Parses an import file's text: the header, then one [`ImportRow`] per record. An error only
/// when the file as a whole is unusable (no header, a column missing).
pub fn parse(text: &str) -> Result<Parsed> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rd = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header = rd.headers().context("reading the CSV header")?.clone();
    if header.iter().all(str::is_empty) {
        anyhow::bail!("empty CSV");
    }
    let col = |n: &str| {
        header
            .iter()
            .position(|h| h == n)
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
    // The file's line where a record starts, from its byte offset (the reader's own line count
    // leaves the header out).
    let line_at = |pos: Option<&csv::Position>| {
        pos.map_or(0, |p| {
            let b = text.as_bytes();
            // After a CRLF the reader's offset may still point at its '\n'.
            let mut at = (p.byte() as usize).min(b.len());
            while at < b.len() && (b[at] == b'\r' || b[at] == b'\n') {
                at += 1;
            }
            b[..at].iter().filter(|c| **c == b'\n').count() as u64 + 1
        })
    };
    let mut out = Parsed::default();
    for rec in rd.records() {
        let r = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = line_at(e.position());
                out.bad.push((line, e.to_string()));
                continue;
            }
        };
        let line = line_at(r.position());
        if r.iter().all(str::is_empty) {
            continue;
        }
        let get = |i: usize| r.get(i).unwrap_or_default().to_string();
        let missing: Vec<&str> = [("property", cp), ("reservation_code", cc)]
            .iter()
            .filter(|(_, i)| get(*i).is_empty())
            .map(|(n, _)| *n)
            .collect();
        if !missing.is_empty() {
            out.bad.push((line, format!("no {}", missing.join(", no "))));
            continue;
        }
        out.rows.push((
            line,
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
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect(),
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_by_header_name() {
        let csv = "photos, consent,property,reservation_code,full_name,guest_ref,arrival,departure\n\n\
                   a.jpg;;b.jpg,YES,p1,R-1,Ann Lee,G-1,2026-01-02,2026-01-03\n\
                   ,no,p1,R-2\n";
        let p = parse(csv).unwrap();
        assert!(p.bad.is_empty(), "{:?}", p.bad);
        let rows: Vec<ImportRow> = p.rows.into_iter().map(|(_, r)| r).collect();
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

    #[test]
    fn quoted_fields_bom_crlf_and_a_bad_row_among_good_ones() {
        let csv = "\u{feff}property,reservation_code,full_name,guest_ref,arrival,departure,consent,photos\r\n\
                   p1,R-1,\"Lee, Ann \"\"Annie\"\"\",G-1,today,today+1,yes,\"a,1.jpg; b.jpg\"\r\n\
                   p1,,No Code,G-2,today,today+1,no,\r\n\
                   p1,R-3,Bo,G-3,today,today+2,no,\r\n";
        let p = parse(csv).unwrap();
        assert_eq!(p.rows.len(), 2, "{p:?}");
        let (line, first) = &p.rows[0];
        assert_eq!(*line, 2);
        assert_eq!(
            first.reservation.guest.as_ref().unwrap().full_name,
            "Lee, Ann \"Annie\""
        );
        assert_eq!(first.photos, ["a,1.jpg", "b.jpg"]);
        assert_eq!(p.rows[1].1.reservation.reservation_code, "R-3");
        assert_eq!(p.bad, [(3, "no reservation_code".to_string())]);
        // The BOM is not part of the first column's name.
        assert!(parse("\u{feff}property,reservation_code\n")
            .unwrap_err()
            .to_string()
            .contains("full_name"));
    }
}

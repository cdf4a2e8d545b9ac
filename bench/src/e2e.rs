//! The people of a property's day for `lobby-e2e`, drawn from a folder with the layout of
//! `../shared/data`: guests enrolled from one photo who check in with another (LFW identities with
//! at least two photos; MFR2 identities enrolled unmasked who arrive masked), and strangers who were
//! never enrolled (LFW identities with a single photo); and the report of their check-ins
//! ([`Attempt`], [`summarise`]).

use crate::metrics::percentile;
use anyhow::{Context, Result};
use lobby_kiosk_client::ladder::LadderRun;
use lobby_kiosk_client::proto as pv;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An enrolled guest and how they arrive.
#[derive(Debug, Clone)]
pub struct Guest {
    /// "lfw" or "mfr2".
    pub source: &'static str,
    pub identity: String,
    /// Photos the reservation system may enrol from, in order (the next when one is refused).
    pub enrol: Vec<PathBuf>,
    /// The photos the guest checks in with, one check-in each (MFR2 guests lower the mask, when
    /// asked, to show another of their `enrol` photos than the one enrolled).
    pub probes: Vec<PathBuf>,
    /// The identity is of an LFW fold the trained models never saw.
    pub held_out: bool,
}

/// LFW folds (one-based, `identities.tsv`) whose identities trained the mask models
/// (`models/trained/README.md`: folds 0-2 of `pairs.txt`, zero-based).
pub const TRAINED_FOLDS: [u32; 3] = [1, 2, 3];

fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Strangers: an identity and its one photo.
pub type Strangers = Vec<(String, PathBuf)>;

/// LFW identities: those with two or more photos are guests (enrolled from the first, checking in
/// with the second); those with one photo are strangers.
pub fn lfw(data: &Path) -> Result<(Vec<Guest>, Strangers)> {
    let dir = data.join("lfw");
    let tsv = std::fs::read_to_string(dir.join("identities.tsv")).context("lfw/identities.tsv")?;
    let mut fold: BTreeMap<String, u32> = BTreeMap::new();
    for line in tsv.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if let (Some(id), Some(k)) = (f.first(), f.get(3).and_then(|k| k.trim().parse().ok())) {
            fold.insert(id.to_string(), k);
        }
    }
    let (mut guests, mut strangers) = (Vec::new(), Vec::new());
    for (id, k) in &fold {
        let photos = sorted_files(&dir.join("images").join(id));
        match photos.len() {
            0 => {}
            1 => strangers.push((id.clone(), photos[0].clone())),
            // Enrolled from the first photo (the next ones, but the probe, when it is refused);
            // checks in with the second.
            _ => guests.push(Guest {
                source: "lfw",
                identity: id.clone(),
                enrol: photos
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != 1)
                    .map(|(_, p)| p.clone())
                    .collect(),
                probes: vec![photos[1].clone()],
                held_out: !TRAINED_FOLDS.contains(k),
            }),
        }
    }
    Ok((guests, strangers))
}

/// MFR2 identities with an unmasked and a masked photo (`labels.csv`): enrolled unmasked, each
/// masked photo a check-in; when asked to lower the mask, another unmasked photo of theirs.
pub fn mfr2(data: &Path) -> Result<Vec<Guest>> {
    let dir = data.join("mfr2");
    let csv = crate::datasets::Csv::read(&dir.join("labels.csv"))?;
    let (ci, cid, cm) = (csv.col("image")?, csv.col("identity")?, csv.col("masked")?);
    let mut by_id: BTreeMap<String, (Vec<PathBuf>, Vec<PathBuf>)> = BTreeMap::new();
    for r in &csv.rows {
        let e = by_id.entry(r[cid].clone()).or_default();
        let p = dir.join(&r[ci]);
        if r[cm] == "1" {
            e.1.push(p)
        } else {
            e.0.push(p)
        }
    }
    Ok(by_id
        .into_iter()
        .filter(|(_, (clean, masked))| !clean.is_empty() && !masked.is_empty())
        .map(|(id, (mut clean, mut masked))| {
            clean.sort();
            masked.sort();
            Guest {
                source: "mfr2",
                identity: id,
                enrol: clean,
                probes: masked,
                held_out: false,
            }
        })
        .collect())
}

/// `n` items spread evenly over `v` (all of them when `n >= v.len()`).
pub fn spread<T: Clone>(v: &[T], n: usize) -> Vec<T> {
    if n >= v.len() {
        return v.to_vec();
    }
    (0..n).map(|i| v[i * v.len() / n].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_picks_evenly() {
        let v: Vec<usize> = (0..10).collect();
        assert_eq!(spread(&v, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(spread(&v, 20).len(), 10);
    }
}

/// One kiosk check-in and how it ended.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub group: &'static str,
    /// Who and with which photo (for the JSON report's detail).
    pub who: String,
    /// The reservation the person may rightly be approved for (none for strangers).
    pub own_code: Option<String>,
    pub run: LadderRun,
    pub ms: f64,
}

pub const CAPTURE: [pv::Reason; 8] = [
    pv::Reason::NoFace,
    pv::Reason::MultipleFaces,
    pv::Reason::FaceTooSmall,
    pv::Reason::FaceOutOfFrame,
    pv::Reason::TooDark,
    pv::Reason::TooBright,
    pv::Reason::Blurred,
    pv::Reason::HeadTurned,
];

pub fn reasons(a: &pv::CheckInResponse) -> Vec<pv::Reason> {
    a.reasons.iter().filter_map(|r| pv::Reason::try_from(*r).ok()).collect()
}

impl Attempt {
    /// The photo passed the capture checks (the first answer is not capture guidance).
    pub fn usable(&self) -> bool {
        self.run
            .answers
            .first()
            .is_some_and(|a| a.outcome != pv::Outcome::Retry as i32 || !reasons(a).iter().any(|r| CAPTURE.contains(r)))
    }
    pub fn outcome(&self) -> &'static str {
        self.run
            .decision()
            .map(|d| lobby_kiosk_client::outcome_name(d.outcome))
            .unwrap_or("NONE")
    }
    pub fn approved(&self) -> bool {
        self.outcome() == "APPROVED"
    }
    pub fn approved_right(&self) -> bool {
        self.approved() && self.run.decision().map(|d| &d.reservation_code) == self.own_code.as_ref()
    }
}

pub fn summarise(attempts: &[&Attempt]) -> Value {
    let n = attempts.len();
    let usable: Vec<&&Attempt> = attempts.iter().filter(|a| a.usable()).collect();
    let right = attempts.iter().filter(|a| a.approved_right()).count();
    let right_usable = usable.iter().filter(|a| a.approved_right()).count();
    let wrong = attempts.iter().filter(|a| a.approved() && !a.approved_right()).count();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut final_reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut steps: BTreeMap<String, usize> = BTreeMap::new();
    for a in attempts {
        *outcomes.entry(a.outcome()).or_default() += 1;
        if let Some(d) = a.run.decision() {
            for r in reasons(d) {
                *final_reasons
                    .entry(r.as_str_name().trim_start_matches("REASON_").to_string())
                    .or_default() += 1;
            }
        }
        let s: Vec<&str> = a
            .run
            .steps
            .iter()
            .map(|s| s.as_str_name().trim_start_matches("REASON_"))
            .collect();
        *steps
            .entry(if s.is_empty() { "none".into() } else { s.join(" > ") })
            .or_default() += 1;
    }
    let ms: Vec<f64> = attempts.iter().map(|a| a.ms).collect();
    let detail: Vec<Value> = attempts
        .iter()
        .filter(|a| !a.approved_right())
        .map(|a| {
            let answers: Vec<String> = a
                .run
                .answers
                .iter()
                .map(|x| {
                    format!(
                        "{}[{}]",
                        lobby_kiosk_client::outcome_name(x.outcome),
                        lobby_kiosk_client::reason_names(&x.reasons).join(",")
                    )
                })
                .collect();
            json!({"who": a.who, "answers": answers})
        })
        .collect();
    let frames: Vec<f64> = attempts.iter().map(|a| a.run.frames_sent as f64).collect();
    let rate = |a: usize, b: usize| (a as f64 / b.max(1) as f64 * 10_000.0).round() / 10_000.0;
    json!({
        "probes": n,
        "usable": usable.len(),
        "contactless": right,
        "contactless_rate": rate(right, n),
        "contactless_rate_usable": rate(right_usable, usable.len()),
        "wrong_guest_approved": wrong,
        "outcomes": outcomes,
        "final_reasons": final_reasons,
        "ladder_steps": steps,
        "mean_steps": (attempts.iter().map(|a| a.run.steps.len()).sum::<usize>() as f64 / n.max(1) as f64 * 100.0).round() / 100.0,
        "mean_frames": (frames.iter().sum::<f64>() / n.max(1) as f64 * 100.0).round() / 100.0,
        "latency_ms": {"p50": (percentile(&ms, 50.0) * 10.0).round() / 10.0, "p99": (percentile(&ms, 99.0) * 10.0).round() / 10.0},
        "not_contactless": detail,
    })
}

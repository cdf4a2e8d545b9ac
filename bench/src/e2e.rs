//! The people of a property's day for `lobby-e2e`, drawn from a folder with the layout of
//! `../shared/data`: guests enrolled from one photo who check in with another (LFW identities with
//! at least two photos; MFR2 identities enrolled unmasked who arrive masked), and strangers who were
//! never enrolled (LFW identities with a single photo).

use anyhow::{Context, Result};
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

/// LFW identities: those with two or more photos are guests (enrolled from the first, checking in
/// with the second); those with one photo are strangers.
pub fn lfw(data: &Path) -> Result<(Vec<Guest>, Vec<(String, PathBuf)>)> {
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

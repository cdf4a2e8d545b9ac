//! Readers for the data layout of `../shared/data` (any folder with that layout works):
//! `lfw/pairs.txt` + `lfw/images/`, `mfr2/pairs.csv` + `mfr2/images/`, `nuaa_antispoof/manifest.csv`,
//! `edge_cases/manifest.csv`, `uncropped_identities/pairs.csv` + `manifest.csv`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A verification pair: two image paths, same person or not, and the fold it belongs to.
#[derive(Debug, Clone)]
pub struct Pair {
    pub a: PathBuf,
    pub b: PathBuf,
    pub same: bool,
    pub fold: usize,
    /// Whether each image shows a masked face (MFR2 labels; false elsewhere).
    pub masked: (bool, bool),
}

/// LFW `pairs.txt`: header `folds<TAB>n`, then per fold n matched and n mismatched lines.
pub fn lfw_pairs(dir: &Path) -> Result<Vec<Pair>> {
    let text = std::fs::read_to_string(dir.join("pairs.txt")).context("reading lfw/pairs.txt")?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<usize> = lines
        .next()
        .context("empty pairs.txt")?
        .split_whitespace()
        .map(|t| t.parse().context("pairs.txt header"))
        .collect::<Result<_>>()?;
    let (folds, n) = match header.as_slice() {
        [f, n] => (*f, *n),
        _ => bail!("pairs.txt header must be `folds n`"),
    };
    let img = |name: &str, i: &str| -> Result<PathBuf> {
        let i: usize = i.parse().with_context(|| format!("image index {i}"))?;
        Ok(dir.join("images").join(name).join(format!("{name}_{i:04}.jpg")))
    };
    let mut pairs = Vec::new();
    for (k, line) in lines.enumerate() {
        let fold = k / (2 * n);
        if fold >= folds {
            break;
        }
        let t: Vec<&str> = line.split_whitespace().collect();
        let pair = match t.as_slice() {
            [name, i, j] => Pair {
                a: img(name, i)?,
                b: img(name, j)?,
                same: true,
                fold,
                masked: (false, false),
            },
            [n1, i, n2, j] => Pair {
                a: img(n1, i)?,
                b: img(n2, j)?,
                same: false,
                fold,
                masked: (false, false),
            },
            _ => bail!("bad pairs.txt line {}: {line}", k + 2),
        };
        pairs.push(pair);
    }
    Ok(pairs)
}

/// Splits a CSV line, honouring double quotes.
pub fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Reads a CSV file with a header into rows of (column name -> value) lookups.
pub struct Csv {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Csv {
    pub fn read(path: &Path) -> Result<Csv> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        // Quoted fields may hold newlines: join physical lines until the quotes balance.
        let mut records = Vec::new();
        let mut acc = String::new();
        for line in text.lines() {
            if !acc.is_empty() {
                acc.push('\n');
            }
            acc.push_str(line);
            if acc.matches('"').count().is_multiple_of(2) {
                if !acc.trim().is_empty() {
                    records.push(csv_fields(&acc));
                }
                acc.clear();
            }
        }
        let mut it = records.into_iter();
        let header = it.next().context("empty csv")?;
        Ok(Csv {
            header,
            rows: it.collect(),
        })
    }

    pub fn col(&self, name: &str) -> Result<usize> {
        self.header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("column {name} missing"))
    }
}

/// MFR2 `pairs.csv`: img1, img2, same, mask1, mask2. Folds: stratified 10-fold by pair order.
pub fn mfr2_pairs(dir: &Path) -> Result<Vec<Pair>> {
    let csv = Csv::read(&dir.join("pairs.csv"))?;
    let (c1, c2, cs, m1, m2) = (
        csv.col("img1")?,
        csv.col("img2")?,
        csv.col("same")?,
        csv.col("mask1")?,
        csv.col("mask2")?,
    );
    let (mut npos, mut nneg) = (0usize, 0usize);
    let masked = |m: &str| !m.is_empty() && m != "no-mask";
    let mut pairs = Vec::new();
    for r in &csv.rows {
        let same = r.get(cs).map(|s| s.trim() == "1").unwrap_or(false);
        let k = if same { &mut npos } else { &mut nneg };
        let fold = *k % 10;
        *k += 1;
        pairs.push(Pair {
            a: dir.join(&r[c1]),
            b: dir.join(&r[c2]),
            same,
            fold,
            masked: (masked(&r[m1]), masked(&r[m2])),
        });
    }
    Ok(pairs)
}

/// A labelled liveness sample.
#[derive(Debug, Clone)]
pub struct LiveSample {
    pub path: PathBuf,
    pub live: bool,
    pub source: &'static str,
}

/// NUAA (`manifest.csv`: image, label live|print_attack) and, when present, the screen-replay edge
/// cases (`edge_cases/spoof_screen/*` attacks, `edge_cases/live_reference/*` live).
pub fn liveness_samples(data: &Path) -> Result<Vec<LiveSample>> {
    let mut out = Vec::new();
    let nuaa = data.join("nuaa_antispoof");
    if nuaa.join("manifest.csv").exists() {
        let csv = Csv::read(&nuaa.join("manifest.csv"))?;
        let (ci, cl) = (csv.col("image")?, csv.col("label")?);
        for r in &csv.rows {
            out.push(LiveSample {
                path: nuaa.join(&r[ci]),
                live: r[cl] == "live",
                source: "nuaa_print",
            });
        }
    }
    for (sub, live) in [("spoof_screen", false), ("live_reference", true)] {
        let dir = data.join("edge_cases").join(sub);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for path in files {
                out.push(LiveSample {
                    path,
                    live,
                    source: "edge_screen_replay",
                });
            }
        }
    }
    Ok(out)
}

/// An edge-case photo with its expected face count (when asserted).
#[derive(Debug, Clone)]
pub struct EdgeCase {
    pub path: PathBuf,
    pub rel: String,
    pub category: String,
    pub expected_faces: Option<usize>,
}

pub fn edge_cases(dir: &Path) -> Result<Vec<EdgeCase>> {
    let csv = Csv::read(&dir.join("manifest.csv"))?;
    let (ci, cc, ce) = (csv.col("image")?, csv.col("category")?, csv.col("expected_faces")?);
    Ok(csv
        .rows
        .iter()
        .map(|r| EdgeCase {
            path: dir.join(&r[ci]),
            rel: r[ci].clone(),
            category: r[cc].clone(),
            expected_faces: r[ce].trim().parse().ok(),
        })
        .collect())
}

/// Images and the identity of each.
pub type Manifest = Vec<(PathBuf, String)>;

/// `uncropped_identities`: pairs.csv (img1, img2, same) and manifest.csv (image, identity).
pub fn uncropped(dir: &Path) -> Result<(Vec<Pair>, Manifest)> {
    let csv = Csv::read(&dir.join("pairs.csv"))?;
    let (c1, c2, cs) = (csv.col("img1")?, csv.col("img2")?, csv.col("same")?);
    let pairs = csv
        .rows
        .iter()
        .map(|r| Pair {
            a: dir.join(&r[c1]),
            b: dir.join(&r[c2]),
            same: r[cs].trim() == "1",
            fold: 0,
            masked: (false, false),
        })
        .collect();
    let man = Csv::read(&dir.join("manifest.csv"))?;
    let (mi, mid) = (man.col("image")?, man.col("identity")?);
    let ids = man.rows.iter().map(|r| (dir.join(&r[mi]), r[mid].clone())).collect();
    Ok((pairs, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_commas() {
        assert_eq!(csv_fields(r#"a,"b, c",,"d ""q""""#), vec!["a", "b, c", "", r#"d "q""#]);
    }
}

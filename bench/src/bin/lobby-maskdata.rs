//! `lobby-maskdata --data DIR --folds 0,1,2 --variants K --out DIR`: the training data of the mask
//! models (`models/trained/README.md`), made with the service's own pipeline so training sees what
//! the service sees.
//!
//! For every LFW image of the given folds of `pairs.txt` (LFW View 2 folds are disjoint in identity,
//! so the other folds stay unseen): the aligned 112x112 crop of the guest face, and K copies of the
//! photo with a synthetic mask (`vision::mask`, style, colour and height drawn from a seed per image
//! and variant), each detected again and aligned from the masked photo's own landmarks, as a kiosk
//! would see it (the clean landmarks when the detector misses the masked face).
//!
//! Writes `clean.u8` (N x 112 x 112 x 3 RGB), `masked.u8` (N x K x 112 x 112 x 3) and `index.csv`
//! (row, identity, fold, image, the styles, re-detection misses). Never commit the output: it is
//! made from the LFW photos.
use anyhow::{bail, Context, Result};
use clap::Parser;
use lobby_bench::datasets;
use lobby_bench::masks::{random_mask, random_varied_mask, SplitMix};
use lobby_models::{default_model_dir, ensure, Source};
use lobby_service::vision::mask_render;
use lobby_service::vision::quality::primary_face;
use lobby_service::vision::{Vision, VisionConfig};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;

/// Seeds for training masks; the evaluation draws from 20261121 + pair index, far from these.
const SEED_BASE: u64 = 7_000_000_000;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    data: PathBuf,
    /// Zero-based folds of lfw/pairs.txt to take images from.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    folds: Vec<usize>,
    #[arg(long, default_value_t = 4)]
    variants: usize,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Draw the masks with `random_varied_mask` (printed patterns, any colour, uneven light,
    /// grain: the mask detector's data) instead of `random_mask` (the embedder's data).
    #[arg(long)]
    varied: bool,
}

struct Sample {
    clean: Vec<u8>,
    masked: Vec<Vec<u8>>,
    styles: Vec<String>,
    misses: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()?;
    let paths = ensure(&default_model_dir(), &Source::from_env())?;
    let v = Vision::load(&paths, VisionConfig::default())?;
    let pairs = datasets::lfw_pairs(&args.data.join("lfw"))?;
    // Image -> fold; identities per fold, to check the folds really are disjoint.
    let mut images: BTreeMap<PathBuf, usize> = BTreeMap::new();
    let mut ids: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let ident = |p: &PathBuf| {
        p.parent()
            .and_then(|d| d.file_name())
            .map(|s| s.to_string_lossy().into_owned())
    };
    for p in &pairs {
        for img in [&p.a, &p.b] {
            ids.entry(p.fold).or_default().insert(ident(img).unwrap_or_default());
            if args.folds.contains(&p.fold) {
                images.insert(img.clone(), p.fold);
            }
        }
    }
    for (&f, s) in &ids {
        for (&g, t) in &ids {
            if f < g && s.intersection(t).next().is_some() {
                bail!("folds {f} and {g} share identities");
            }
        }
    }
    let list: Vec<(PathBuf, usize)> = images.into_iter().collect();
    eprintln!(
        "{} images from folds {:?}, {} variants each",
        list.len(),
        args.folds,
        args.variants
    );
    let samples: Vec<Option<Sample>> = list
        .par_iter()
        .enumerate()
        .map(|(i, (path, _))| -> Option<Sample> {
            let img = v.decode(&std::fs::read(path).ok()?).ok()?;
            let faces = v.detect(&img).ok()?;
            let face = faces.get(primary_face(&faces, img.width(), img.height())?)?.clone();
            let clean = v.align(&img, &face).ok()?.into_raw();
            let mut s = Sample {
                clean,
                masked: Vec::new(),
                styles: Vec::new(),
                misses: 0,
            };
            for k in 0..args.variants {
                let mut rng = SplitMix::new(SEED_BASE + (i * 64 + k) as u64);
                let spec = if args.varied {
                    random_varied_mask(&mut rng)
                } else {
                    random_mask(&mut rng)
                };
                let m = mask_render::render(&img, &face.landmarks, &spec)?;
                let found = v.detect(&m).unwrap_or_default();
                let f = match primary_face(&found, m.width(), m.height()) {
                    Some(j) => found[j].clone(),
                    None => {
                        s.misses += 1;
                        face.clone()
                    }
                };
                s.masked.push(v.align(&m, &f).ok()?.into_raw());
                s.styles.push(format!("{:?}", spec.style).to_lowercase());
            }
            Some(s)
        })
        .collect();
    std::fs::create_dir_all(&args.out)?;
    let mut clean = std::io::BufWriter::new(std::fs::File::create(args.out.join("clean.u8"))?);
    let mut masked = std::io::BufWriter::new(std::fs::File::create(args.out.join("masked.u8"))?);
    let mut index = std::fs::File::create(args.out.join("index.csv"))?;
    writeln!(index, "row,identity,fold,image,styles,misses")?;
    let (mut n, mut misses, mut skipped) = (0usize, 0usize, 0usize);
    for ((path, fold), s) in list.iter().zip(samples) {
        let Some(s) = s else {
            skipped += 1;
            continue;
        };
        clean.write_all(&s.clean)?;
        for m in &s.masked {
            masked.write_all(m)?;
        }
        let name = path.file_name().context("image name")?.to_string_lossy();
        writeln!(
            index,
            "{n},{},{fold},{name},{},{}",
            ident(path).unwrap_or_default(),
            s.styles.join(";"),
            s.misses
        )?;
        misses += s.misses;
        n += 1;
    }
    eprintln!(
        "wrote {n} faces x {} masked variants to {} ({skipped} images without a face, {misses} masked copies not re-detected)",
        args.variants,
        args.out.display()
    );
    Ok(())
}

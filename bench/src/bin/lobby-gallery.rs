//! `lobby-gallery`: 1:N search structures at scale, and the server's start-up with many templates.
//!
//! For each size N: N synthetic templates and queries that are noisy copies of stored templates (a
//! genuine check-in photo of an enrolled guest), and for Faiss Flat, HNSW and IVF: build time, memory
//! (resident set growth), query p50/p99 one query at a time on one thread, and recall@1 against exact
//! search. Two kinds of synthetic data:
//! - default: random unit vectors of `--dim` (cosine between templates ~ N(0, 0.07)), queries at
//!   cosine ~0.65 to their source. No neighbourhood structure at all: the worst case for HNSW and IVF.
//! - `--data DIR` (embedding-like): the service's embedder is run on LFW photos of `DIR`; templates
//!   are drawn from a Gaussian with the mean and covariance of those real templates (as
//!   `mean + sum_i z_i (t_i - mean) / sqrt(m)`, z ~ N(0, 1), then L2-normalised), and queries add to
//!   their source noise shaped like real genuine-pair differences (same construction on `a - b` of
//!   LFW's same-person pairs), scaled so that their mean cosine to the source is the real pairs'
//!   mean cosine. Real faces' spectrum, no real photo stored.
//!
//! Then (`--startup N`) N templates written to a real SQLite store and the time from nothing to a
//! serving-ready `App` (models loaded and planned, every property's gallery built), and its memory.
use anyhow::Result;
use clap::Parser;
use faiss::{index_factory, Index, MetricType};
use lobby_bench::{metrics::percentile, record};
use lobby_models::{default_model_dir, ensure, Source};
use lobby_service::config::Settings;
use lobby_service::core::App;
use lobby_service::gallery::TemplateKind;
use lobby_service::store::SqliteStore;
use lobby_service::vision::Vision;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Flat vs HNSW vs IVF at scale; server start-up with many stored templates")]
struct Args {
    #[arg(long, default_value = "1000,100000,1000000", value_delimiter = ',')]
    n: Vec<usize>,
    #[arg(long, default_value_t = 192)]
    dim: usize,
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Templates to store for the start-up measurement (0: skip).
    #[arg(long, default_value_t = 1_000_000)]
    startup: usize,
    /// Properties those templates are spread over (each guest has a clean and a masked template).
    #[arg(long, default_value_t = 1000)]
    properties: usize,
    #[arg(long)]
    models: Option<PathBuf>,
    /// Embedding-like data: take the templates' statistics from the LFW photos of this data folder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// LFW same-person pairs embedded for those statistics (both photos of each).
    #[arg(long, default_value_t = 600)]
    real_pairs: usize,
    /// Index kinds to build (Flat is always built: it is the exact reference).
    #[arg(long, default_value = "HNSW,IVF", value_delimiter = ',')]
    indexes: Vec<String>,
    /// HNSW graph degree M (links per node).
    #[arg(long, default_value_t = 32)]
    hnsw_m: usize,
    /// HNSW efConstruction (candidates kept while linking each added template; Faiss's default 40).
    #[arg(long, default_value_t = 40)]
    ef_construction: usize,
    /// HNSW efSearch values swept.
    #[arg(long, default_value = "16,32,64,128", value_delimiter = ',')]
    ef_search: Vec<usize>,
    /// Measure the start-up on PostgreSQL instead of SQLite: a libpq connection string without
    /// `dbname` of a server where a scratch database is created (and dropped afterwards).
    #[arg(long)]
    postgres: Option<String>,
    #[command(flatten)]
    out: record::Output,
}

/// Real templates' statistics: rows (dim floats each) whose Gaussian combinations reproduce the
/// covariance of real templates (`between`) and of genuine-pair differences (`within`).
struct RealStats {
    mean: Vec<f32>,
    between: Vec<f32>,
    within: Vec<f32>,
    /// Mean cosine of the real same-person pairs.
    genuine_cos: f32,
}

impl RealStats {
    fn measure(args: &Args, data: &std::path::Path) -> Result<RealStats> {
        use rayon::prelude::*;
        let model_dir = args.models.clone().unwrap_or_else(default_model_dir);
        let paths = ensure(&model_dir, &Source::from_env())?;
        let vision = Vision::load(&paths, lobby_service::vision::VisionConfig::default())?;
        let pairs: Vec<_> = lobby_bench::datasets::lfw_pairs(&data.join("lfw"))?
            .into_iter()
            .filter(|p| p.same)
            .take(args.real_pairs)
            .collect();
        let embed = |p: &PathBuf| -> Option<Vec<f32>> {
            let a = vision.analyze_bytes(&std::fs::read(p).ok()?).ok()?;
            Some(a.primary?.embedding.0.clone())
        };
        let got: Vec<(Vec<f32>, Vec<f32>)> = pairs
            .par_iter()
            .filter_map(|p| Some((embed(&p.a)?, embed(&p.b)?)))
            .collect();
        anyhow::ensure!(got.len() >= 100, "only {} LFW pairs embedded", got.len());
        let dim = got[0].0.len();
        anyhow::ensure!(
            dim == args.dim,
            "the embedder gives {dim}-d templates, --dim is {}",
            args.dim
        );
        let m = 2 * got.len();
        let mut mean = vec![0f32; dim];
        for (a, b) in &got {
            for i in 0..dim {
                mean[i] += (a[i] + b[i]) / m as f32;
            }
        }
        // Noise with the shape of a - b, scaled so that a query's mean cosine to its normalised
        // source equals the real pairs' mean cosine c: |s + n|^2 = 1 + k^2 E|a - b|^2 = 1 / c^2.
        let c = got.iter().map(|(a, b)| dot(a, b)).sum::<f32>() / got.len() as f32;
        let d2 = got.iter().map(|(a, b)| 2.0 - 2.0 * dot(a, b)).sum::<f32>() / got.len() as f32;
        let k = ((1.0 / (c * c) - 1.0) / d2.max(1e-6)).max(0.0).sqrt();
        let mut between = Vec::with_capacity(m * dim);
        let mut within = Vec::with_capacity(got.len() * dim);
        for (a, b) in &got {
            between.extend(a.iter().zip(&mean).map(|(x, u)| x - u));
            between.extend(b.iter().zip(&mean).map(|(x, u)| x - u));
            within.extend(a.iter().zip(b).map(|(x, y)| k * (x - y)));
        }
        eprintln!(
            "embedding-like data: statistics of {m} real templates from {} LFW same-person pairs (mean cosine {c:.3})",
            got.len()
        );
        Ok(RealStats {
            mean,
            between,
            within,
            genuine_cos: c,
        })
    }

    /// `n` draws of `offset + sum_i z_i row_i / sqrt(rows)`; `offset` is per draw (dim floats each)
    /// or one vector for all. Not normalised.
    fn draw(rows: &[f32], dim: usize, offsets: &[f32], n: usize, seed: u64) -> Vec<f32> {
        use rayon::prelude::*;
        let k = rows.len() / dim;
        let scale = 1.0 / (k as f32).sqrt();
        let mut out = vec![0f32; n * dim];
        out.par_chunks_mut(dim).enumerate().for_each(|(j, v)| {
            let mut rng = StdRng::seed_from_u64(seed ^ (j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let off = if offsets.len() == dim {
                offsets
            } else {
                &offsets[j * dim..(j + 1) * dim]
            };
            v.copy_from_slice(off);
            for row in rows.chunks(dim) {
                let z = gaussian(&mut rng) * scale;
                v.iter_mut().zip(row).for_each(|(x, r)| *x += z * r);
            }
        });
        out
    }

    /// `n` templates and `queries` queries (each a noisy copy of a random template), normalised,
    /// and a line saying how similar they came out.
    fn data(&self, rng: &mut StdRng, n: usize, dim: usize, queries: usize) -> (Vec<f32>, Vec<f32>, String) {
        let row = |d: &[f32], i: usize| d[i * dim..(i + 1) * dim].to_vec();
        let mut data = RealStats::draw(&self.between, dim, &self.mean, n, 20261122 + n as u64);
        data.chunks_mut(dim).for_each(unit);
        let sources: Vec<f32> = (0..queries).flat_map(|_| row(&data, rng.gen_range(0..n))).collect();
        let mut q = RealStats::draw(&self.within, dim, &sources, queries, 7 + n as u64);
        q.chunks_mut(dim).for_each(unit);
        let to_source: Vec<f64> = q
            .chunks(dim)
            .zip(sources.chunks(dim))
            .map(|(a, b)| dot(a, b) as f64)
            .collect();
        // And between different stored templates (real LFW impostor pairs: mean ~0.0-0.1).
        let between: Vec<f64> = (0..2000)
            .map(|_| dot(&row(&data, rng.gen_range(0..n)), &row(&data, rng.gen_range(0..n))) as f64)
            .collect();
        let (m1, s1) = mean_sd(&to_source);
        let (m2, s2) = mean_sd(&between);
        let summary = format!("{m1:.3} (sd {s1:.3}), between templates {m2:.3} (sd {s2:.3})");
        (data, q, summary)
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt())
}

/// `n` random unit templates and `queries` queries, each a stored template plus noise at cosine
/// ~0.65 to it.
fn random_data(rng: &mut StdRng, n: usize, dim: usize, queries: usize) -> (Vec<f32>, Vec<f32>) {
    let data = random_units(rng, n, dim);
    let mut out = Vec::with_capacity(queries * dim);
    for _ in 0..queries {
        let src = rng.gen_range(0..n);
        let mut noise: Vec<f32> = (0..dim).map(|_| gaussian(rng)).collect();
        unit(&mut noise);
        let mut q: Vec<f32> = data[src * dim..(src + 1) * dim]
            .iter()
            .zip(&noise)
            .map(|(a, b)| 0.65 * a + 0.76 * b)
            .collect();
        unit(&mut q);
        out.extend(q);
    }
    (data, out)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map(|pages| pages * 4096.0 / 1048576.0)
        .unwrap_or(0.0)
}

fn unit(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

fn gaussian(rng: &mut StdRng) -> f32 {
    // Box-Muller.
    let (u, v): (f32, f32) = (rng.gen_range(1e-7..1.0), rng.gen());
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

fn random_units(rng: &mut StdRng, n: usize, dim: usize) -> Vec<f32> {
    let mut data: Vec<f32> = (0..n * dim).map(|_| gaussian(rng)).collect();
    data.chunks_mut(dim).for_each(unit);
    data
}

struct Row {
    n: usize,
    index: String,
    param: String,
    build_s: f64,
    mem_mib: f64,
    p50_ms: f64,
    p99_ms: f64,
    recall: f64,
}

fn search_all(index: &mut impl Index, queries: &[f32], dim: usize) -> Result<(Vec<i64>, Vec<f64>)> {
    let mut labels = Vec::new();
    let mut times = Vec::new();
    for q in queries.chunks(dim) {
        let t = Instant::now();
        let r = index.search(q, 1)?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        labels.push(r.labels[0].get().map(|v| v as i64).unwrap_or(-1));
    }
    Ok((labels, times))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dim = args.dim;
    let per_property = idle_property_bytes(dim)?;
    let stats = match &args.data {
        Some(d) => Some(RealStats::measure(&args, d)?),
        None => None,
    };
    let mut rows: Vec<Row> = Vec::new();
    // Embedding-like data: how similar the drawn queries and templates came out, per N.
    let mut similarities = Vec::new();
    for &n in &args.n {
        let mut rng = StdRng::seed_from_u64(20261122 + n as u64);
        let (data, queries) = match &stats {
            None => random_data(&mut rng, n, dim, args.queries),
            Some(st) => {
                let (data, queries, summary) = st.data(&mut rng, n, dim, args.queries);
                similarities.push(summary);
                (data, queries)
            }
        };
        let nlist = ((4.0 * (n as f64).sqrt()) as usize).clamp(16, 8192);
        let mut exact: Vec<i64> = Vec::new();
        let mut configs: Vec<(String, Vec<(&str, f64)>)> = vec![
            ("Flat".into(), vec![("", 0.0)]),
            (
                format!("HNSW{}", args.hnsw_m),
                args.ef_search.iter().map(|&e| ("efSearch", e as f64)).collect(),
            ),
            (
                format!("IVF{nlist},Flat"),
                vec![("nprobe", 1.0), ("nprobe", 8.0), ("nprobe", 32.0), ("nprobe", 128.0)],
            ),
        ];
        configs.retain(|(f, _)| f == "Flat" || args.indexes.iter().any(|k| f.starts_with(k.as_str())));
        for (factory, params) in configs {
            let before = rss_mib();
            let t = Instant::now();
            let mut index = index_factory(dim as u32, &factory, MetricType::InnerProduct)?;
            if factory.starts_with("HNSW") {
                faiss::index::autotune::ParameterSpace::new()?.set_index_parameter(
                    &index,
                    "efConstruction",
                    args.ef_construction as f64,
                )?;
            }
            if !index.is_trained() {
                let train_n = n.min(nlist * 64);
                index.train(&data[..train_n * dim])?;
            }
            // Build on every core; search on one.
            index.add(&data)?;
            let build_s = t.elapsed().as_secs_f64();
            let mem_mib = rss_mib() - before;
            faiss_set_threads(1);
            for (name, value) in params {
                if !name.is_empty() {
                    faiss::index::autotune::ParameterSpace::new()?.set_index_parameter(&index, name, value)?;
                }
                let (labels, times) = search_all(&mut index, &queries, dim)?;
                if factory == "Flat" {
                    exact = labels.clone();
                }
                let hits = labels.iter().zip(&exact).filter(|(a, b)| a == b).count();
                let row = Row {
                    n,
                    index: factory.clone(),
                    param: if name.is_empty() {
                        "exact".into()
                    } else if factory.starts_with("HNSW") {
                        format!("efConstruction={} {name}={value}", args.ef_construction)
                    } else {
                        format!("{name}={value}")
                    },
                    build_s,
                    mem_mib,
                    p50_ms: percentile(&times, 50.0),
                    p99_ms: percentile(&times, 99.0),
                    recall: hits as f64 / labels.len().max(1) as f64,
                };
                eprintln!(
                    "n={n} {} {}: build {:.1} s, +{:.0} MiB, p50 {:.3} ms, p99 {:.3} ms, recall@1 {:.4}",
                    row.index, row.param, row.build_s, row.mem_mib, row.p50_ms, row.p99_ms, row.recall
                );
                rows.push(row);
            }
            faiss_set_threads(0);
            drop(index);
        }
    }
    let q = args.queries;
    let kind = match &stats {
        None => format!("Synthetic {dim}-d unit templates (random: no neighbourhood structure); {q} queries (noisy copies of stored templates, cosine ~0.65)"),
        Some(st) => format!(
            "Embedding-like {dim}-d templates (Gaussian with the mean and covariance of {} real templates of LFW, normalised); {q} queries (stored templates plus noise shaped like {} real same-person differences, scaled to their mean cosine {:.3}; measured per N: mean cosine to their source {})",
            st.between.len() / dim,
            st.within.len() / dim,
            st.genuine_cos,
            similarities.join(" / ")
        ),
    };
    let mut table = format!(
        "{kind}, one at a time on one thread; recall@1 against exact (Flat) search; memory = resident-set growth while building.\n\n| N | index | search parameter | build s | memory MiB | bytes/template | p50 ms | p99 ms | recall@1 |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.3} | {:.3} | {:.4} |\n",
            r.n,
            r.index,
            r.param,
            r.build_s,
            r.mem_mib,
            r.mem_mib * 1048576.0 / r.n as f64,
            r.p50_ms,
            r.p99_ms,
            r.recall
        ));
    }
    let mut startup = json!(null);
    if args.startup > 0 {
        let s = measure_startup(&args, per_property)?;
        table.push_str(&format!("\n{}\n", s.0));
        startup = s.1;
    }
    println!("{table}");
    let j: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({"n": r.n, "index": r.index, "param": r.param, "build_s": r.build_s, "mem_mib": r.mem_mib,
                   "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "recall_at_1": r.recall})
        })
        .collect();
    let report = json!({"rows": j, "startup": startup, "machine": record::machine_facts()});
    args.out.emit("lobby-gallery", &table, &report)?;
    Ok(())
}

/// Resident bytes of an idle property (its own index and map), measured first thing, before the
/// allocator holds freed memory: 10,000 properties of one guest (two templates) each against the
/// same 20,000 templates in one property.
fn idle_property_bytes(dim: usize) -> Result<f64> {
    let props = 10_000;
    let gallery_rss = |spread: bool| -> Result<f64> {
        let before = rss_mib();
        let g = lobby_service::gallery::Gallery::new(dim as u32, "Flat")?;
        let mut rng = StdRng::seed_from_u64(9);
        for p in 0..props {
            let items: Vec<lobby_service::gallery::Item> = [TemplateKind::Clean, TemplateKind::Masked]
                .into_iter()
                .enumerate()
                .map(|(k, kind)| {
                    (
                        (2 * p + k) as i64 + 1,
                        format!("g_{p:08}"),
                        kind,
                        random_units(&mut rng, 1, dim),
                    )
                })
                .collect();
            g.add(&if spread { format!("p{p:05}") } else { "one".to_string() }, &items)?;
        }
        let grown = rss_mib() - before;
        drop(g);
        Ok(grown)
    };
    let one = gallery_rss(false)?;
    let spread = gallery_rss(true)?;
    let per_property = (spread - one) * 1048576.0 / props as f64;
    Ok(per_property)
}

fn faiss_set_threads(n: i32) {
    // 0: back to the default (every core).
    let n = if n == 0 {
        std::thread::available_parallelism()
            .map(|c| c.get() as i32)
            .unwrap_or(1)
    } else {
        n
    };
    extern "C" {
        fn omp_set_num_threads(n: i32);
    }
    // SAFETY: plain OpenMP runtime call, no pointers.
    unsafe { omp_set_num_threads(n) }
}

/// Stores `--startup` templates in a fresh SQLite file and times what the server does before it
/// serves: load and plan the models, open the store, build every property's gallery.
fn measure_startup(args: &Args, per_property: f64) -> Result<(String, serde_json::Value)> {
    let n = args.startup;
    let dir = std::env::temp_dir().join(format!("lobby-gallery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("lobby.sqlite3");
    // The service's schema and template key (templates are stored sealed, as the server stores them).
    let keys = Arc::new(lobby_service::store::TemplateKeys::load(&dir.join("template.key"))?);
    let t = Instant::now();
    let pg_url = match &args.postgres {
        Some(base) => Some(fill_postgres(args, base, &keys)?),
        None => None,
    };
    if pg_url.is_none() {
        drop(SqliteStore::open(&db, keys.clone())?);
        let mut c = rusqlite::Connection::open(&db)?;
        c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        let tx = c.transaction()?;
        let model = lobby_service::core::model_id();
        let mut rng = StdRng::seed_from_u64(7);
        let guests = n.div_ceil(2);
        {
            let mut g = tx.prepare("INSERT INTO guests (guest_id, full_name, guest_ref, consent_method, consent_text_version, consent_at_ms, ref_key) VALUES (?1, 'Bench Guest', ?1, 'bench', 'v1', 0, randomblob(32))")?;
            let mut r = tx.prepare("INSERT INTO reservations (property_id, code, guest_id, arrival, departure, status) VALUES (?1, ?2, ?3, '2026-11-22', '2026-11-24', 'BOOKED')")?;
            let mut tp = tx.prepare("INSERT INTO templates (guest_id, property_id, model_id, kind, vector, created_at_ms, key_id) VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)")?;
            let mut stored = 0;
            for k in 0..guests {
                let gid = format!("g_{k:08}");
                let prop = format!("p{:04}", k % args.properties.max(1));
                g.execute([&gid])?;
                r.execute([&prop, &format!("R{k:08}"), &gid])?;
                for kind in ["clean", "masked"] {
                    if stored == n {
                        break;
                    }
                    let v = random_units(&mut rng, 1, args.dim);
                    let blob: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    let aad = lobby_service::store::cipher::template_aad(&gid, &prop, kind, &model);
                    let (key_id, sealed) = keys.seal(&aad, &blob);
                    tp.execute(rusqlite::params![gid, prop, model, kind, sealed, key_id])?;
                    stored += 1;
                }
            }
        }
        tx.commit()?;
    }
    let fill_s = t.elapsed().as_secs_f64();
    let db_mib = std::fs::metadata(&db)
        .map(|m| m.len() as f64 / 1048576.0)
        .unwrap_or(0.0)
        + std::fs::metadata(dir.join("lobby.sqlite3-wal"))
            .map(|m| m.len() as f64 / 1048576.0)
            .unwrap_or(0.0);
    let model_dir = args.models.clone().unwrap_or_else(default_model_dir);
    let paths = ensure(&model_dir, &Source::from_env())?;
    let rss0 = rss_mib();
    let t = Instant::now();
    let mut settings = Settings::load_from(None, std::iter::empty())?;
    settings.data_dir = dir.clone();
    if let Some(url) = &pg_url {
        settings.store.url = url.clone();
    }
    let vision = Arc::new(Vision::load(&paths, App::vision_config(&settings))?);
    let models_s = t.elapsed().as_secs_f64();
    let rss_models = rss_mib();
    let t2 = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let app = rt.block_on(App::start(settings, vision))?;
    let gallery_s = t2.elapsed().as_secs_f64();
    let total_s = t.elapsed().as_secs_f64();
    let rss_app = rss_mib();
    let per_template = (rss_app - rss_models) * 1048576.0 / n as f64;
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
    if let (Some(base), Some(_)) = (&args.postgres, &pg_url) {
        rt.block_on(drop_database(base))?;
    }
    let store_what = match &pg_url {
        Some(_) => "PostgreSQL".to_string(),
        None => format!("SQLite file {db_mib:.0} MiB"),
    };
    let text = format!(
        "Start-up with {n} templates stored ({} guests x clean + masked, {} properties; {store_what}, filled in {fill_s:.0} s): **{total_s:.2} s** from nothing to a serving-ready App (models loaded and planned {models_s:.2} s; store opened and galleries built {gallery_s:.2} s). Resident memory: {:.0} MiB with the models alone, {:.0} MiB with the galleries, i.e. **{per_template:.0} bytes per stored template** in the running service (the 768-byte vector in Faiss, its id map, the guest and kind of each template). Resident growth includes what the allocator keeps from reading the rows. An idle property (its own index and map: 10,000 properties of one guest each against the same templates in one property): **{:.0} bytes**.",
        n.div_ceil(2),
        args.properties,
        rss_models - rss0,
        rss_app - rss0,
        per_property.max(0.0),
    );
    eprintln!("{text}");
    Ok((
        text,
        json!({"templates": n, "properties": args.properties, "store": if pg_url.is_some() { "postgres" } else { "sqlite" }, "total_s": total_s, "models_s": models_s, "galleries_s": gallery_s,
               "rss_models_mib": rss_models - rss0, "rss_app_mib": rss_app - rss0, "bytes_per_template": per_template, "bytes_per_idle_property": per_property}),
    ))
}

const PG_DB: &str = "lobby_gallery_startup";

/// Makes a fresh database on the PostgreSQL server `base` names, with the service's schema, and
/// fills it as the SQLite variant does (guests, reservations, clean + masked templates sealed as
/// the server seals them), with COPY. Returns its connection string.
fn fill_postgres(args: &Args, base: &str, keys: &Arc<lobby_service::store::TemplateKeys>) -> Result<String> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let url = format!("{base} dbname={PG_DB}");
    rt.block_on(async {
        drop_database(base).await?;
        let (admin, conn) = tokio_postgres::connect(&format!("{base} dbname=postgres"), tokio_postgres::NoTls).await?;
        let h = tokio::spawn(conn);
        admin.batch_execute(&format!("CREATE DATABASE {PG_DB}")).await?;
        drop(admin);
        let _ = h.await;
        drop(lobby_service::store::PgStore::open(&url, 2, "", keys.clone()).await?);
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let n = args.startup;
        let guests = n.div_ceil(2);
        let model = lobby_service::core::model_id();
        let date = chrono::NaiveDate::from_ymd_opt(2026, 11, 22).expect("a date");
        {
            let sink = c
                .copy_in("COPY guests (guest_id, full_name, guest_ref, ref_key, consent_method, consent_text_version, consent_at_ms) FROM STDIN BINARY")
                .await?;
            let w = BinaryCopyInWriter::new(
                sink,
                &[Type::TEXT, Type::TEXT, Type::TEXT, Type::BYTEA, Type::TEXT, Type::TEXT, Type::INT8],
            );
            let mut w = std::pin::pin!(w);
            for k in 0..guests {
                let gid = format!("g_{k:08}");
                let key = lobby_service::store::cipher::new_subject_key();
                w.as_mut()
                    .write(&[&gid, &"Bench Guest", &gid, &key, &"bench", &"v1", &0i64])
                    .await?;
            }
            w.finish().await?;
        }
        {
            let sink = c
                .copy_in("COPY reservations (property_id, code, guest_id, arrival, departure, status) FROM STDIN BINARY")
                .await?;
            let w = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::TEXT, Type::DATE, Type::DATE, Type::TEXT]);
            let mut w = std::pin::pin!(w);
            for k in 0..guests {
                let prop = format!("p{:04}", k % args.properties.max(1));
                w.as_mut()
                    .write(&[&prop, &format!("R{k:08}"), &format!("g_{k:08}"), &date, &(date + chrono::Duration::days(2)), &"BOOKED"])
                    .await?;
            }
            w.finish().await?;
        }
        {
            let sink = c
                .copy_in("COPY templates (guest_id, property_id, model_id, kind, vector, key_id, created_at_ms) FROM STDIN BINARY")
                .await?;
            let w = BinaryCopyInWriter::new(
                sink,
                &[Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::BYTEA, Type::TEXT, Type::INT8],
            );
            let mut w = std::pin::pin!(w);
            let mut rng = StdRng::seed_from_u64(7);
            let mut stored = 0;
            for k in 0..guests {
                let gid = format!("g_{k:08}");
                let prop = format!("p{:04}", k % args.properties.max(1));
                for kind in ["clean", "masked"] {
                    if stored == n {
                        break;
                    }
                    let v = random_units(&mut rng, 1, args.dim);
                    let blob: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    let aad = lobby_service::store::cipher::template_aad(&gid, &prop, kind, &model);
                    let (key_id, sealed) = keys.seal(&aad, &blob);
                    w.as_mut()
                        .write(&[&gid, &prop, &model, &kind, &sealed, &key_id, &0i64])
                        .await?;
                    stored += 1;
                }
            }
            w.finish().await?;
        }
        c.batch_execute("ANALYZE").await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(url)
}

async fn drop_database(base: &str) -> Result<()> {
    let (admin, conn) = tokio_postgres::connect(&format!("{base} dbname=postgres"), tokio_postgres::NoTls).await?;
    let h = tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)"))
        .await?;
    drop(admin);
    let _ = h.await;
    Ok(())
}

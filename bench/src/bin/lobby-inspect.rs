//! `lobby-inspect [--aligned DIR] IMAGE...`: what the pipeline sees in each photo (faces, scores,
//! quality, liveness) and the cosine similarity of each photo's guest face to the first one's, for
//! looking into a single case. With `--aligned DIR`, writes the aligned 112x112 crops there (local
//! debugging only; never commit them), each also with a synthetic mask. Prints no embeddings.
use anyhow::Result;
use lobby_bench::masks::{random_mask, SplitMix};
use lobby_models::{default_model_dir, ensure, Source};
use lobby_service::vision::embed::{alignment_transform, ARCFACE_TEMPLATE};
use lobby_service::vision::mask_render;
use lobby_service::vision::{Embedding, Vision, VisionConfig};
use std::path::PathBuf;

fn main() -> Result<()> {
    let paths = ensure(&default_model_dir(), &Source::from_env())?;
    let v = Vision::load(&paths, VisionConfig::default())?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut aligned_dir: Option<PathBuf> = None;
    if args.first().map(String::as_str) == Some("--aligned") && args.len() > 1 {
        aligned_dir = Some(PathBuf::from(args.remove(1)));
        args.remove(0);
    }
    let mut first: Option<Embedding> = None;
    for (n, p) in args.iter().enumerate() {
        let bytes = std::fs::read(p)?;
        let a = match v.analyze_bytes(&bytes) {
            Err(e) => {
                println!("{p}: error: {e}");
                continue;
            }
            Ok(a) => a,
        };
        println!("{p}: {}x{}, {} face(s)", a.width, a.height, a.faces.len());
        for f in &a.faces {
            let b = f.bbox;
            let m = alignment_transform(&f.landmarks)?;
            let res = f
                .landmarks
                .iter()
                .zip(ARCFACE_TEMPLATE.iter())
                .map(|(p, t)| m.apply(*p).dist(*t).powi(2))
                .sum::<f32>()
                .sqrt();
            println!(
                "  face score {:.3} box [{:.0},{:.0} {:.0}x{:.0}] template residual {:.2}",
                f.score, b.x, b.y, b.w, b.h, res
            );
        }
        if let Some(f) = a.primary {
            println!("  primary: {:?}", f.quality);
            println!("  liveness: {:?}", f.liveness);
            println!("  mask: p {:.3}, masked {}", f.mask.p_masked, f.mask.masked);
            match &first {
                None => first = Some(f.embedding.clone()),
                Some(e) => println!("  cosine to the first photo's face: {:.4}", e.cosine(&f.embedding)),
            }
            if let Some(dir) = &aligned_dir {
                let img = v.decode(&bytes)?;
                std::fs::create_dir_all(dir)?;
                v.align(&img, &f.face)?.save(dir.join(format!("{n:03}.png")))?;
                // The same face with a synthetic mask (style drawn from the photo's index).
                let spec = random_mask(&mut SplitMix::new(n as u64));
                if let Some(masked) = mask_render::render(&img, &f.face.landmarks, &spec) {
                    v.align(&masked, &f.face)?
                        .save(dir.join(format!("{n:03}-masked.png")))?;
                }
            }
        }
    }
    Ok(())
}

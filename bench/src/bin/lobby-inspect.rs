//! `lobby-inspect IMAGE...`: what the pipeline sees in each photo (faces, scores, quality,
//! liveness), for looking into a single case. Prints no embeddings.
use anyhow::Result;
use lobby_models::{default_model_dir, ensure, Source};
use lobby_service::vision::{Vision, VisionConfig};

fn main() -> Result<()> {
    let paths = ensure(&default_model_dir(), &Source::from_env())?;
    let v = Vision::load(&paths, VisionConfig::default())?;
    for p in std::env::args().skip(1) {
        let bytes = std::fs::read(&p)?;
        match v.analyze_bytes(&bytes) {
            Err(e) => println!("{p}: error: {e}"),
            Ok(a) => {
                println!("{p}: {}x{}, {} face(s)", a.width, a.height, a.faces.len());
                for f in &a.faces {
                    let b = f.bbox;
                    let m = lobby_service::vision::embed::alignment_transform(&f.landmarks)?;
                    let res = f
                        .landmarks
                        .iter()
                        .zip(lobby_service::vision::embed::ARCFACE_TEMPLATE.iter())
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
                }
            }
        }
    }
    Ok(())
}

//! The models Lobby runs, and the code that installs them.
//!
//! Model files are never committed. [`install`] copies each model of the embedded manifest from a
//! [`Source`] (a local mirror folder or a base URL) into the folder the service loads from, checking
//! its sha256 before it is moved into place; [`verify`] checks an installed folder. A missing or
//! corrupt model is an [`Error`] that names the file and how to fetch it.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The manifest shipped in the repository (`models/manifest.toml`).
pub const MANIFEST_TOML: &str = include_str!("../manifest.toml");

/// Largest model file accepted from a URL; ours are all under 23 MB.
const MAX_DOWNLOAD_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
pub struct ModelSpec {
    pub id: String,
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    pub licence: String,
    pub role: String,
    pub input: String,
    pub output: String,
    /// Weights we trained ourselves, committed under `models/trained/` and compiled into the
    /// binaries; installed like the others (sha256-checked), never fetched from a source.
    #[serde(default)]
    pub trained: bool,
}

/// The self-trained models, by file name (`models/trained/README.md` says how each was made).
const TRAINED: &[(&str, &[u8])] = &[
    (
        "face_embedding_mobilefacenet_masked_192.onnx",
        include_bytes!("../trained/face_embedding_mobilefacenet_masked_192.onnx"),
    ),
    (
        "mask_detector_probe.onnx",
        include_bytes!("../trained/mask_detector_probe.onnx"),
    ),
];

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "model")]
    pub models: Vec<ModelSpec>,
}

impl Manifest {
    pub fn embedded() -> Manifest {
        // The manifest is compiled in and checked by a unit test, so this cannot fail at run time.
        toml::from_str(MANIFEST_TOML).expect("embedded models/manifest.toml is valid")
    }

    pub fn get(&self, id: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.id == id)
    }
}

/// Where models come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A folder holding the model files under their manifest names.
    Mirror(PathBuf),
    /// A URL prefix; the file name is appended.
    BaseUrl(String),
}

impl Source {
    /// `LOBBY_MODEL_BASE_URL` if set, else `LOBBY_MODEL_MIRROR`, else `../shared/models`.
    pub fn from_env() -> Source {
        if let Some(url) = std::env::var("LOBBY_MODEL_BASE_URL").ok().filter(|s| !s.is_empty()) {
            return Source::BaseUrl(url);
        }
        let dir = std::env::var_os("LOBBY_MODEL_MIRROR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("../shared/models"));
        Source::Mirror(dir)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Mirror(p) => write!(f, "mirror folder {}", p.display()),
            Source::BaseUrl(u) => write!(f, "base URL {u}"),
        }
    }
}

/// The folder models are installed into and loaded from: `LOBBY_MODEL_DIR`, else `lobby-data/models`.
pub fn default_model_dir() -> PathBuf {
    std::env::var_os("LOBBY_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("lobby-data/models"))
}

const HOW_TO_FETCH: &str = "install the models with `cargo run --release -p lobby-models -- install` \
(options --mirror DIR or --base-url URL; env LOBBY_MODEL_MIRROR / LOBBY_MODEL_BASE_URL)";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model file {path} is missing; {HOW_TO_FETCH}")]
    Missing { path: PathBuf },
    #[error("model file {path} is corrupt (sha256 {actual}, expected {expected}); {HOW_TO_FETCH}")]
    Corrupt {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("cannot fetch {file} from {source_desc}: {reason}; {HOW_TO_FETCH}")]
    Fetch {
        file: String,
        source_desc: String,
        reason: String,
    },
    #[error("model {file} fetched from {source_desc} has sha256 {actual}, expected {expected}; not installed")]
    FetchedCorrupt {
        file: String,
        source_desc: String,
        expected: String,
        actual: String,
    },
    #[error("cannot write {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
}

/// Paths of the verified model files, by manifest id.
#[derive(Debug, Clone)]
pub struct ModelPaths {
    pub detector: PathBuf,
    pub embedder: PathBuf,
    pub liveness_v2: PathBuf,
    pub liveness_v1se: PathBuf,
    pub mask_detector: PathBuf,
    pub teacher: PathBuf,
    pub dlib: PathBuf,
}

impl ModelPaths {
    fn in_dir(dir: &Path, manifest: &Manifest) -> ModelPaths {
        let p = |id: &str| {
            dir.join(
                &manifest
                    .get(id)
                    .expect("manifest lists every model the service loads")
                    .file,
            )
        };
        ModelPaths {
            detector: p("detector"),
            embedder: p("embedder"),
            liveness_v2: p("liveness_v2"),
            liveness_v1se: p("liveness_v1se"),
            mask_detector: p("mask_detector"),
            teacher: p("teacher"),
            dlib: p("dlib"),
        }
    }
}

pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn check_one(dir: &Path, spec: &ModelSpec) -> Result<(), Error> {
    let path = dir.join(&spec.file);
    match sha256_file(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::Missing { path }),
        Err(err) => Err(Error::Io { path, err }),
        Ok(actual) if actual != spec.sha256 => Err(Error::Corrupt {
            path,
            expected: spec.sha256.clone(),
            actual,
        }),
        Ok(_) => Ok(()),
    }
}

/// Checks every model of the manifest in `dir` by sha256.
pub fn verify(dir: &Path) -> Result<ModelPaths, Error> {
    let manifest = Manifest::embedded();
    for spec in &manifest.models {
        check_one(dir, spec)?;
    }
    Ok(ModelPaths::in_dir(dir, &manifest))
}

/// What [`install`] did with one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    AlreadyPresent,
    Fetched,
}

/// Installs every model of the manifest into `dir` from `source`. A model already present with the
/// right sha256 is left alone; anything else is fetched to a temporary file, verified, and renamed
/// into place, so a failed or corrupt fetch never leaves a bad file where the service loads from.
pub fn install(dir: &Path, source: &Source) -> Result<Vec<(String, Installed)>, Error> {
    let manifest = Manifest::embedded();
    fs::create_dir_all(dir).map_err(|err| Error::Io {
        path: dir.to_path_buf(),
        err,
    })?;
    let mut done = Vec::new();
    for spec in &manifest.models {
        if check_one(dir, spec).is_ok() {
            done.push((spec.file.clone(), Installed::AlreadyPresent));
            continue;
        }
        let (bytes, from) = if spec.trained {
            let bytes = TRAINED
                .iter()
                .find(|(f, _)| *f == spec.file)
                .map(|(_, b)| b.to_vec())
                .ok_or_else(|| Error::Fetch {
                    file: spec.file.clone(),
                    source_desc: "models/trained".into(),
                    reason: "not compiled in".into(),
                })?;
            (bytes, "models/trained (compiled in)".to_string())
        } else {
            (fetch(source, &spec.file)?, source.to_string())
        };
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != spec.sha256 {
            return Err(Error::FetchedCorrupt {
                file: spec.file.clone(),
                source_desc: from,
                expected: spec.sha256.clone(),
                actual,
            });
        }
        let dest = dir.join(&spec.file);
        let tmp = dir.join(format!(".{}.partial", spec.file));
        let io_err = |err| Error::Io {
            path: dest.clone(),
            err,
        };
        {
            let mut f = fs::File::create(&tmp).map_err(io_err)?;
            f.write_all(&bytes).map_err(io_err)?;
            f.sync_all().map_err(io_err)?;
        }
        fs::rename(&tmp, &dest).map_err(io_err)?;
        done.push((spec.file.clone(), Installed::Fetched));
    }
    Ok(done)
}

/// Verifies `dir`, installing from `source` first when a model is missing or corrupt.
pub fn ensure(dir: &Path, source: &Source) -> Result<ModelPaths, Error> {
    if let Ok(paths) = verify(dir) {
        return Ok(paths);
    }
    install(dir, source)?;
    verify(dir)
}

fn fetch(source: &Source, file: &str) -> Result<Vec<u8>, Error> {
    let fail = |reason: String| Error::Fetch {
        file: file.to_string(),
        source_desc: source.to_string(),
        reason,
    };
    match source {
        Source::Mirror(dir) => fs::read(dir.join(file)).map_err(|e| fail(e.to_string())),
        Source::BaseUrl(base) => {
            let url = format!("{}/{}", base.trim_end_matches('/'), file);
            let resp = ureq::get(&url)
                .timeout(std::time::Duration::from_secs(120))
                .call()
                .map_err(|e| fail(e.to_string()))?;
            let mut bytes = Vec::new();
            resp.into_reader()
                .take(MAX_DOWNLOAD_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| fail(e.to_string()))?;
            if bytes.len() as u64 > MAX_DOWNLOAD_BYTES {
                return Err(fail(format!("larger than {MAX_DOWNLOAD_BYTES} bytes")));
            }
            Ok(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// An empty folder, removed with everything in it when the test ends.
    fn scratch(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("lobby-models-{name}-"))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn manifest_parses_and_lists_the_models() {
        let m = Manifest::embedded();
        for id in [
            "detector",
            "embedder",
            "liveness_v2",
            "liveness_v1se",
            "mask_detector",
            "teacher",
            "dlib",
        ] {
            let s = m.get(id).unwrap();
            assert_eq!(s.sha256.len(), 64, "{id}");
            assert!(s.file.ends_with(".onnx"));
        }
    }

    #[test]
    fn trained_models_are_compiled_in_with_the_manifest_sha256_and_size() {
        let m = Manifest::embedded();
        let trained: Vec<&ModelSpec> = m.models.iter().filter(|s| s.trained).collect();
        assert!(!trained.is_empty());
        for s in trained {
            let (_, bytes) = TRAINED.iter().find(|(f, _)| *f == s.file).expect("compiled in");
            assert_eq!(hex::encode(Sha256::digest(bytes)), s.sha256, "{}", s.file);
            assert_eq!(bytes.len() as u64, s.bytes, "{}", s.file);
            assert!(s.bytes <= 10 * 1024 * 1024, "self-trained weights stay under 10 MB");
        }
    }

    #[test]
    fn missing_model_names_the_file_and_how_to_fetch() {
        let d = scratch("missing");
        let e = verify(d.path()).unwrap_err().to_string();
        assert!(e.contains("face_detection_yunet_s_dynamic.onnx"), "{e}");
        assert!(e.contains("lobby-models -- install"), "{e}");
    }

    #[test]
    fn corrupt_mirror_is_refused_and_nothing_is_installed() {
        let (mirror, dest) = (scratch("badmirror"), scratch("baddest"));
        let (mirror, dest) = (mirror.path(), dest.path());
        let m = Manifest::embedded();
        for s in &m.models {
            fs::write(mirror.join(&s.file), b"not a model").unwrap();
        }
        let e = install(dest, &Source::Mirror(mirror.to_path_buf())).unwrap_err();
        assert!(matches!(e, Error::FetchedCorrupt { .. }), "{e}");
        assert!(!dest.join(&m.models[0].file).exists());
        // And a corrupt file already in place is reported as corrupt.
        fs::write(dest.join(&m.models[0].file), b"xx").unwrap();
        assert!(matches!(verify(dest).unwrap_err(), Error::Corrupt { .. }));
    }

    /// A tiny HTTP server on loopback that serves `files`, for the base-URL path.
    fn serve(files: Vec<(String, Vec<u8>)>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in l.incoming().take(files.len() + 2) {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_string();
                match files.iter().find(|(name, _)| *name == path) {
                    Some((_, body)) => {
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = s.write_all(body);
                    }
                    None => {
                        let _ = write!(
                            s,
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    }
                }
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn base_url_with_wrong_bytes_is_refused() {
        let m = Manifest::embedded();
        let files = m
            .models
            .iter()
            .map(|s| (s.file.clone(), b"tampered".to_vec()))
            .collect();
        let url = serve(files);
        let dest = scratch("url");
        let e = install(dest.path(), &Source::BaseUrl(url)).unwrap_err();
        assert!(matches!(e, Error::FetchedCorrupt { .. }), "{e}");
    }

    #[test]
    fn base_url_404_is_a_fetch_error() {
        let url = serve(vec![]);
        let dest = scratch("url404");
        let e = install(dest.path(), &Source::BaseUrl(url)).unwrap_err();
        assert!(matches!(e, Error::Fetch { .. }), "{e}");
    }
}

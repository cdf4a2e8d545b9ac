fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // Offline, pinned protoc: no system package needed.
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("lobby_descriptor.bin"))
        .compile_protos(&["proto/lobby/v1/lobby.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

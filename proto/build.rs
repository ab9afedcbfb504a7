//! Compiles `meshplane/v1/*.proto` with the pure-Rust `protox` (no `protoc`
//! needed) and generates prost types plus tonic stubs from the descriptors.

use std::{env, fs, path::PathBuf};

use prost::Message;

/// Messages that carry secrets: their `Debug` is written by hand in `lib.rs`
/// so tokens and private keys never reach a log.
const SECRET_MESSAGES: &[&str] = &[
    "meshplane.v1.EnrollmentKey",
    "meshplane.v1.RegisterRequest",
    "meshplane.v1.RegisterResponse",
    "meshplane.v1.GetExtClientConfigResponse",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let dir = root.join("meshplane/v1");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // compile_fds does not write the descriptor set: encode it for reflection.
    fs::write(out.join("meshplane_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .client_mod_attribute(".", "#[cfg(feature = \"client\")]")
        .server_mod_attribute(".", "#[cfg(feature = \"server\")]")
        .skip_debug(SECRET_MESSAGES.iter().copied())
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    Ok(())
}

//! Compiles `proto/` into Rust with a pure-Rust protobuf compiler (protox), so a fresh machine
//! needs no system `protoc`. The encoded descriptor set is kept in `OUT_DIR` for gRPC reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTO_ROOT: &str = "proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = proto_files(PROTO_ROOT)?;
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    let descriptors = protox::compile(&files, [PROTO_ROOT])?;
    let descriptor_path = PathBuf::from(env::var("OUT_DIR")?).join("switchbord_descriptor.bin");
    fs::write(&descriptor_path, descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_protos(&files, &[PROTO_ROOT.to_owned()])?;
    Ok(())
}

/// Every `.proto` file below `root`, sorted so the generated output is stable.
fn proto_files(root: &str) -> std::io::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::from(root)];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                found.push(path.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    Ok(found)
}

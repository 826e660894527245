//! Compiles the service contract. protoc comes from the `protoc-bin-vendored`
//! crate so a fresh machine builds without installing protobuf tools.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("persistence_descriptor.bin"))
        .compile_protos(
            &["proto/orchestrator/persistence/v1/persistence.proto"],
            &["proto"],
        )?;
    Ok(())
}

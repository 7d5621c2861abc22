//! proto/pipeserve.echo.rs is the code generated from proto/echo.proto, kept
//! in the repository so that building pipeserve (or its examples) never needs
//! `protoc`. This test generates it again with `protoc` (Debian's
//! `protobuf-compiler`, installed by `.ci/install`) and fails if the two
//! differ. `UPDATE_PROTO=1 cargo test --features tonic --test proto` rewrites
//! the checked-in file.
#![cfg(all(feature = "tonic", not(windows)))]

use std::path::Path;

#[test]
fn the_checked_in_echo_code_is_what_protoc_generates_from_the_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("pipeserve-proto-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    tonic_prost_build::configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .compile_protos(&[root.join("proto/echo.proto")], &[root.join("proto")])
        .expect("protoc generates the echo code (is protobuf-compiler installed?)");
    let generated = std::fs::read_to_string(out.join("pipeserve.echo.rs")).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let checked_in = root.join("proto/pipeserve.echo.rs");
    if std::env::var_os("UPDATE_PROTO").is_some() {
        std::fs::write(&checked_in, &generated).unwrap();
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == generated,
        "proto/pipeserve.echo.rs is stale: run UPDATE_PROTO=1 cargo test --features tonic --test proto"
    );
}

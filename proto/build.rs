//! Generates the prost types from `bulkhead/v1/*.proto` with protox (pure
//! Rust: no `protoc` needed). Messages also derive serde, so that a ruleset can
//! be read from and written to JSON (`bulkhead-agent apply --ruleset F.json`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["bulkhead/v1/ruleset.proto", "bulkhead/v1/sync.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    // The service code needs tonic: only with the `grpc` feature.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .message_attribute(
            ".",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = \"camelCase\", default)]",
        )
        .enum_attribute(
            ".",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = \"camelCase\")]",
        )
        .compile_fds(fds)?;
    Ok(())
}

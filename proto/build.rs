//! Generates the prost types from `bulkhead/v1/*.proto` with protox (pure
//! Rust: no `protoc` needed). Messages also derive serde, so that a ruleset can
//! be read from and written to JSON (`bulkhead-agent apply --ruleset F.json`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["bulkhead/v1/ruleset.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
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

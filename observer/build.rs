use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    // AYA_BUILD_SKIP lets the pure parts (correlator, sinks) build and test
    // without the eBPF toolchain; the loader then refuses to start, saying why.
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = PathBuf::from(env::var("OUT_DIR")?).join("observer-ebpf");
        fs::write(out, [])?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "observer-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../observer-ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

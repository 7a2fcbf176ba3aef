//! Link settings for the `tributary` binary.
//!
//! On Linux with glibc the binary's relative relocations are packed (DT_RELR, glibc ≥ 2.36 and binutils
//! ≥ 2.38, as on Debian 12): the dynamic loader then reads a few kilobytes of relocations at startup
//! instead of ~1 MiB, which stays resident in every process, however small its job (a ports import).
fn main() {
    // Depends on nothing else in the package: do not rerun on every source change.
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

//! Generates the C header from the crate's exported items with cbindgen.
//!
//! The header is written to `$OUT_DIR/tokio_bridge.h` on every build. The committed copy in
//! `include/` is compared with it by a test (`header_is_fresh`); to update the committed copy,
//! build with `TB_UPDATE_HEADER=1`.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=TB_UPDATE_HEADER");
    // Threads of a runtime may still run when a program dlclose()s the library: keep it mapped
    // for the life of the process rather than unmap code that threads are executing.
    if env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux" || os == "android") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
    // The C harness compiles C programs with the `cc` crate, which needs the target triple.
    println!("cargo:rustc-env=TB_TARGET={}", env::var("TARGET").unwrap());

    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("tokio_bridge.h");
    let version = |part: &str| env::var(format!("CARGO_PKG_VERSION_{part}")).unwrap();
    let (major, minor, patch) = (version("MAJOR"), version("MINOR"), version("PATCH"));
    let macros = format!(
        "/** Major version of this header. */\n#define TB_VERSION_MAJOR {major}\n\
         /** Minor version of this header. */\n#define TB_VERSION_MINOR {minor}\n\
         /** Patch version of this header. */\n#define TB_VERSION_PATCH {patch}\n\
         /** This header's version as (major << 16) | (minor << 8) | patch; compare with \
         tb_version(). */\n#define TB_VERSION_HEX \
         (((uint32_t){major} << 16) | ((uint32_t){minor} << 8) | (uint32_t){patch})\n\
         /** This header's version as text. */\n#define TB_VERSION_STRING \"{major}.{minor}.{patch}\"\n"
    );
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is valid");
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .with_after_include(macros)
        .generate()
        .expect("the C header can be generated")
        .write_to_file(&out);
    if env::var_os("TB_UPDATE_HEADER").is_some() {
        std::fs::copy(&out, crate_dir.join("include/tokio_bridge.h"))
            .expect("include/tokio_bridge.h can be written");
    }
}

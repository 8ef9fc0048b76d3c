//! The library's version at run time, to compare with the header's `TB_VERSION_*` macros.

use std::ffi::c_char;

const fn parse(s: &str) -> u32 {
    let bytes = s.as_bytes();
    let mut value = 0;
    let mut i = 0;
    while i < bytes.len() {
        value = value * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    value
}

const MAJOR: u32 = parse(env!("CARGO_PKG_VERSION_MAJOR"));
const MINOR: u32 = parse(env!("CARGO_PKG_VERSION_MINOR"));
const PATCH: u32 = parse(env!("CARGO_PKG_VERSION_PATCH"));

/// Returns the version of the loaded library as `(major << 16) | (minor << 8) | patch`.
///
/// Compare it with `TB_VERSION_HEX` from the header the program was compiled against. Any
/// thread.
#[no_mangle]
pub extern "C" fn tb_version() -> u32 {
    crate::panic::boundary_value("tb_version", 0, || (MAJOR << 16) | (MINOR << 8) | PATCH)
}

/// Returns the version of the loaded library as text, such as `"0.1.0"`.
///
/// The string is static: never free it. Any thread.
#[no_mangle]
pub extern "C" fn tb_version_string() -> *const c_char {
    let version = concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast();
    crate::panic::boundary_value("tb_version_string", version, || version)
}

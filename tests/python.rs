//! Runs the Python package's tests (`python/tests`, standard `unittest`) against the freshly built
//! library, so that `cargo test` covers the Python half too. Needs `python3` (3.9 or later) and
//! a C compiler (`cc`, or `$CC`) for the tests' C jobs.

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/deps/libtokio_bridge.so`: the library `cargo test` built, next to this test.
fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let lib = exe.parent().unwrap().join("libtokio_bridge.so");
    assert!(lib.exists(), "no {}", lib.display());
    lib
}

#[test]
fn python_package() {
    let output = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "python/tests"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TOKIO_BRIDGE_LIB", library())
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "the Python tests failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

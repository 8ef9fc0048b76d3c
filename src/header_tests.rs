//! Checks on the committed C header: fresh, versioned like the crate, documented throughout.

const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/tokio_bridge.h"));
const COMMITTED: &str = include_str!("../include/tokio_bridge.h");

#[test]
fn header_is_fresh() {
    assert!(
        GENERATED == COMMITTED,
        "include/tokio_bridge.h differs from the header build.rs generates from the sources: \
         run `TB_UPDATE_HEADER=1 cargo build` and commit include/tokio_bridge.h"
    );
}

fn macro_value(name: &str) -> String {
    let prefix = format!("#define {name} ");
    COMMITTED
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} is not defined in the header"))
        .to_string()
}

#[test]
fn version_macros_match_cargo_toml() {
    assert_eq!(
        macro_value("TB_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MAJOR")
    );
    assert_eq!(
        macro_value("TB_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    assert_eq!(
        macro_value("TB_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION_PATCH")
    );
    assert_eq!(
        macro_value("TB_VERSION_STRING"),
        format!("\"{}\"", env!("CARGO_PKG_VERSION"))
    );
}

/// Every declaration, constant and struct field is preceded by a doc comment.
#[test]
fn every_item_is_documented() {
    let lines: Vec<&str> = COMMITTED.lines().collect();
    let mut undocumented = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let is_item = (trimmed.starts_with("#define TB_")
            && !trimmed.contains("TB_TOKIO_BRIDGE_H"))
            || trimmed.starts_with("typedef ")
            || (line.starts_with(|c: char| c.is_ascii_alphabetic())
                && line.contains("tb_")
                && line.ends_with(");"))
            || (line.starts_with("  ") && line.ends_with(';') && !trimmed.starts_with('}'));
        let documented = i > 0 && lines[i - 1].trim_end().ends_with("*/");
        if is_item && !documented {
            undocumented.push(*line);
        }
    }
    assert!(
        undocumented.is_empty(),
        "undocumented in the header: {undocumented:#?}"
    );
}

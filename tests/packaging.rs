//! The library as a C programmer gets it. `make install` fills a temporary prefix (with
//! `DESTDIR`), and programs are built from outside the source tree against that prefix only:
//! with pkg-config (shared and static), with CMake's `find_package`, and in C++. Also checked
//! here: the installed files, the soname and the exported symbols (`abi/symbols.txt`), an older
//! and smaller `tb_runtime_config`, the header's hygiene in every C and C++ standard under gcc
//! and clang, its names, and the generated API reference (`docs/api.md`).
//!
//! These tests need make, pkg-config, cmake, gcc, g++, clang, binutils and python3. A missing
//! tool fails the test with the command that installs it; `.ci/run` installs them.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const PREFIX: &str = "/opt/tb";
const WARNINGS: [&str; 4] = ["-Wall", "-Wextra", "-Werror", "-pedantic"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn version_part(index: usize) -> u32 {
    let numeric = VERSION.split(['-', '+']).next().unwrap();
    numeric.split('.').nth(index).unwrap().parse().unwrap()
}

fn major() -> u32 {
    version_part(0)
}

fn numeric_version() -> String {
    format!("{}.{}.{}", major(), version_part(1), version_part(2))
}

fn soname() -> String {
    format!("libtokio_bridge.so.{}", major())
}

/// This test binary's scratch directory, outside the source tree: under the system's temporary
/// directory, named after the checkout, emptied at the first use of each run.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut hasher = DefaultHasher::new();
        root().hash(&mut hasher);
        let dir =
            std::env::temp_dir().join(format!("tokio-bridge-packaging-{:x}", hasher.finish()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        dir
    })
}

/// A new empty directory in the scratch directory.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = scratch().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a command and returns its output, whatever its exit status. A program that is not
/// installed fails the test with the command that installs it.
fn output(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|error| {
        let program = command.get_program().to_string_lossy();
        if error.kind() == ErrorKind::NotFound {
            panic!(
                "`{program}` is not installed. The packaging tests need make, pkg-config, cmake, \
                 gcc, g++, clang, binutils and python3; on Debian: apt-get install make \
                 pkg-config cmake g++ clang binutils python3"
            );
        }
        panic!("cannot run `{program}`: {error}")
    })
}

/// Runs a command that must succeed and returns its standard output.
fn run(command: &mut Command) -> String {
    let result = output(command);
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    assert!(
        result.status.success(),
        "{command:?} failed ({}):\n{stdout}\n{}",
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
    stdout
}

/// An installation: `make install DESTDIR=<destdir> PREFIX=/opt/tb`.
struct Install {
    destdir: PathBuf,
}

impl Install {
    fn new(name: &str) -> Install {
        let install = Install {
            destdir: fresh_dir(name),
        };
        install.make("install");
        install
    }

    fn make(&self, target: &str) {
        run(Command::new("make")
            .arg("-C")
            .arg(root())
            .arg(target)
            .arg(format!("DESTDIR={}", self.destdir.display()))
            .arg(format!("PREFIX={PREFIX}"))
            .env("CARGO", env!("CARGO")));
    }

    /// Where the installed prefix is while it sits in `DESTDIR`.
    fn prefix(&self) -> PathBuf {
        self.destdir.join(PREFIX.trim_start_matches('/'))
    }

    fn lib(&self) -> PathBuf {
        self.prefix().join("lib")
    }

    /// The flags pkg-config gives for the installed package `module`, and for nothing else
    /// installed on this machine.
    fn pkg_config(&self, args: &[&str], module: &str) -> Vec<String> {
        run(Command::new("pkg-config")
            .args(args)
            .arg(module)
            .env("PKG_CONFIG_LIBDIR", self.lib().join("pkgconfig"))
            .env_remove("PKG_CONFIG_PATH")
            .env("PKG_CONFIG_SYSROOT_DIR", &self.destdir))
        .split_whitespace()
        .map(String::from)
        .collect()
    }

    /// Runs a program built against this installation, which finds the library by its soname.
    fn run_program(&self, exe: &Path) -> String {
        run(Command::new(exe).env("LD_LIBRARY_PATH", self.lib()))
    }
}

/// The installation every test uses, made once (the first `make install` builds the library).
fn installed() -> &'static Install {
    static INSTALL: OnceLock<Install> = OnceLock::new();
    INSTALL.get_or_init(|| Install::new("stage"))
}

/// Copies `tests/<source>` into `dir`, so that it is built outside the tree.
fn copy_source(source: &str, dir: &Path) -> PathBuf {
    let from = root().join("tests").join(source);
    let to = dir.join(from.file_name().unwrap());
    std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    to
}

/// The `DT_NEEDED` entries of an ELF file.
fn needed(elf: &Path) -> Vec<String> {
    run(Command::new("readelf").arg("-d").arg(elf))
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| Some(line.split('[').nth(1)?.trim_end_matches(']').to_string()))
        .collect()
}

fn expected_consumer_output() -> String {
    format!("tokio_bridge {VERSION}: job TB_OK, value 42\n")
}

/// Checks a consumer program linked to the shared library: it needs the library by its
/// soname, the dynamic loader finds the installed one, and it runs.
fn check_shared_consumer(exe: &Path) {
    let install = installed();
    let needs = needed(exe);
    assert!(
        needs.contains(&soname()),
        "{} should need {} (the soname), not the file it was linked with: {needs:?}",
        exe.display(),
        soname()
    );
    let ldd = run(Command::new("ldd")
        .arg(exe)
        .env("LD_LIBRARY_PATH", install.lib()));
    let resolved = format!("{} => {}", soname(), install.lib().join(soname()).display());
    assert!(
        ldd.contains(&resolved),
        "ldd should show `{resolved}`:\n{ldd}"
    );
    assert_eq!(install.run_program(exe), expected_consumer_output());
}

/// Checks a consumer program linked to the static archive: it needs no libtokio_bridge at run
/// time and runs without the installed library in reach.
fn check_static_consumer(exe: &Path) {
    let needs = needed(exe);
    assert!(
        !needs.iter().any(|lib| lib.starts_with("libtokio_bridge")),
        "{} is linked statically but needs {needs:?}",
        exe.display()
    );
    assert_eq!(run(&mut Command::new(exe)), expected_consumer_output());
}

/// Compiles `sources` into `dir/program` with the warning flags and what
/// `pkg-config <pkg_args> --cflags --libs <module>` gives for the installed package.
fn build_with_pkg_config(
    (compiler, std): (&str, &str),
    dir: &Path,
    sources: &[PathBuf],
    pkg_args: &[&str],
    module: &str,
) -> PathBuf {
    let flags = installed().pkg_config(&[pkg_args, &["--cflags", "--libs"]].concat(), module);
    let exe = dir.join("program");
    run(Command::new(compiler)
        .arg(format!("-std={std}"))
        .args(WARNINGS)
        .args(sources)
        .arg("-o")
        .arg(&exe)
        .args(flags));
    exe
}

const C11: (&str, &str) = ("cc", "c11");

/// Every file and symbolic link below `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// `abi/symbols.txt`: the symbols the library must keep exporting.
fn abi_symbols() -> BTreeSet<String> {
    std::fs::read_to_string(root().join("abi/symbols.txt"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(String::from)
        .collect()
}

#[test]
fn make_install_lays_out_a_c_library_under_destdir_and_prefix() {
    let install = installed();
    let prefix = install.prefix();
    let real = format!("libtokio_bridge.so.{}", numeric_version());
    let found: BTreeSet<PathBuf> = files_under(&install.destdir)
        .into_iter()
        .map(|path| path.strip_prefix(&install.destdir).unwrap().to_path_buf())
        .collect();
    let expected: BTreeSet<PathBuf> = [
        "include/tokio_bridge.h".to_string(),
        format!("lib/{real}"),
        format!("lib/{}", soname()),
        "lib/libtokio_bridge.so".to_string(),
        "lib/libtokio_bridge.a".to_string(),
        "lib/pkgconfig/tokio_bridge.pc".to_string(),
        "lib/pkgconfig/tokio_bridge-static.pc".to_string(),
        "lib/cmake/tokio_bridge/tokio_bridge-config.cmake".to_string(),
        "lib/cmake/tokio_bridge/tokio_bridge-config-version.cmake".to_string(),
    ]
    .iter()
    .map(|file| Path::new(PREFIX.trim_start_matches('/')).join(file))
    .collect();
    assert_eq!(found, expected, "installed files under DESTDIR");

    let lib = install.lib();
    let link = |name: &str| std::fs::read_link(lib.join(name)).unwrap();
    assert_eq!(link(&soname()), Path::new(&real));
    assert_eq!(link("libtokio_bridge.so"), Path::new(&soname()));
    assert_eq!(
        std::fs::read(prefix.join("include/tokio_bridge.h")).unwrap(),
        std::fs::read(root().join("include/tokio_bridge.h")).unwrap(),
        "the installed header is the committed one"
    );
    let dynamic = run(Command::new("readelf").arg("-d").arg(lib.join(&real)));
    let expected_soname = format!("Library soname: [{}]", soname());
    assert!(
        dynamic.contains(&expected_soname),
        "{real} should have `{expected_soname}`:\n{dynamic}"
    );
    // The in-tree build, next to this test, keeps none: the tests and examples link to it by
    // file name, and with a soname they would look for libtokio_bridge.so.X at run time.
    let in_tree = std::env::current_exe()
        .unwrap()
        .with_file_name("libtokio_bridge.so");
    let dynamic = run(Command::new("readelf").arg("-d").arg(&in_tree));
    assert!(
        !dynamic.contains("(SONAME)"),
        "{} must have no soname:\n{dynamic}",
        in_tree.display()
    );

    for file in [
        "pkgconfig/tokio_bridge.pc",
        "pkgconfig/tokio_bridge-static.pc",
        "cmake/tokio_bridge/tokio_bridge-config.cmake",
        "cmake/tokio_bridge/tokio_bridge-config-version.cmake",
    ] {
        let text = std::fs::read_to_string(lib.join(file)).unwrap();
        assert!(
            !text.contains(&install.destdir.display().to_string()) && !text.contains('@'),
            "{file} must name the final prefix, not DESTDIR, and fill every @VARIABLE@:\n{text}"
        );
    }
    assert_eq!(
        install.pkg_config(&["--modversion"], "tokio_bridge"),
        [VERSION]
    );
    let private = |module: &str| install.pkg_config(&["--static", "--libs"], module)[2..].to_vec();
    assert!(
        private("tokio_bridge").contains(&"-lpthread".to_string()),
        "Libs.private lists the native libraries of a static link: {:?}",
        private("tokio_bridge")
    );
    assert_eq!(private("tokio_bridge"), private("tokio_bridge-static"));
}

#[test]
fn make_uninstall_removes_every_installed_file() {
    installed(); // built once, before this second installation reuses the build
    let install = Install::new("uninstall");
    install.make("uninstall");
    let left = files_under(&install.destdir);
    assert!(left.is_empty(), "left after make uninstall: {left:?}");
    assert!(
        !install.lib().join("cmake/tokio_bridge").exists(),
        "the package's own CMake directory is removed"
    );
}

#[test]
fn c_program_links_with_pkg_config() {
    let dir = fresh_dir("pkg-config-shared");
    let sources = [copy_source("packaging/consumer.c", &dir)];
    check_shared_consumer(&build_with_pkg_config(
        C11,
        &dir,
        &sources,
        &[],
        "tokio_bridge",
    ));
}

#[test]
fn c_program_links_statically_with_pkg_config_static() {
    let dir = fresh_dir("pkg-config-static");
    let sources = [copy_source("packaging/consumer.c", &dir)];
    let module = "tokio_bridge-static";
    check_static_consumer(&build_with_pkg_config(
        C11,
        &dir,
        &sources,
        &["--static"],
        module,
    ));
}

#[test]
fn cmake_project_finds_the_package_and_links_both_libraries() {
    let install = installed();
    let dir = fresh_dir("cmake");
    copy_source("packaging/consumer.c", &dir);
    copy_source("packaging/CMakeLists.txt", &dir);
    let incompatible = if major() == 0 {
        format!("0.{}", version_part(1) + 1)
    } else {
        format!("{}.0", major() + 1)
    };
    let build = dir.join("build");
    let configure = run(Command::new("cmake")
        .arg("-S")
        .arg(&dir)
        .arg("-B")
        .arg(&build)
        .arg(format!(
            "-DCMAKE_PREFIX_PATH={}",
            install.prefix().display()
        ))
        .arg("-DCMAKE_FIND_USE_CMAKE_SYSTEM_PATH=OFF")
        .arg(format!("-DTB_VERSION={}", numeric_version()))
        .arg(format!("-DTB_INCOMPATIBLE_VERSION={incompatible}")));
    let package_dir = install.lib().join("cmake/tokio_bridge");
    assert!(
        configure.contains(&format!("tokio_bridge found in {}", package_dir.display())),
        "CMake should use the installed package in {}:\n{configure}",
        package_dir.display()
    );
    run(Command::new("cmake").arg("--build").arg(&build));
    check_shared_consumer(&build.join("consumer_shared"));
    check_static_consumer(&build.join("consumer_static"));
}

#[test]
fn cpp_program_includes_the_header_and_links_every_function() {
    let install = installed();
    let dir = fresh_dir("cpp");
    let symbols = abi_symbols();
    let mut every = String::from(
        "#include <tokio_bridge.h>\n#include <cstddef>\nusing any_fn = void (*)();\n\
         extern const any_fn every_function[] = {\n",
    );
    for symbol in &symbols {
        every += &format!("    reinterpret_cast<any_fn>(&{symbol}),\n");
    }
    every += "};\nextern const std::size_t every_function_count = \
              sizeof every_function / sizeof every_function[0];\n";
    let every_path = dir.join("every_function.cpp");
    std::fs::write(&every_path, every).unwrap();
    let sources = [copy_source("packaging/consumer.cpp", &dir), every_path];
    let cpp11 = ("c++", "c++11");
    let exe = build_with_pkg_config(cpp11, &dir, &sources, &[], "tokio_bridge");
    assert_eq!(
        install.run_program(&exe),
        format!(
            "C++: TB_OK, hello from the blocking pool; {} functions linked\n",
            symbols.len()
        )
    );
}

#[test]
fn the_library_exports_only_the_symbols_of_abi_symbols_txt() {
    let install = installed();
    let library = install.lib().join(soname());
    let exported: BTreeSet<String> = run(Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&library))
    .lines()
    .filter_map(|line| line.split_whitespace().nth(2).map(String::from))
    .collect();
    let foreign: Vec<&String> = exported.iter().filter(|s| !s.starts_with("tb_")).collect();
    assert!(
        foreign.is_empty(),
        "{} exports symbols outside tb_*: {foreign:?}",
        library.display()
    );
    let listed = abi_symbols();
    let gone: Vec<&String> = listed.difference(&exported).collect();
    assert!(
        gone.is_empty(),
        "symbols listed in abi/symbols.txt are no longer exported: {gone:?}. Removing an \
         exported function breaks every program built against it: restore it, or remove it \
         from abi/symbols.txt together with a new major version"
    );
    let new: Vec<&String> = exported.difference(&listed).collect();
    assert!(
        new.is_empty(),
        "new exported symbols {new:?}: add them to abi/symbols.txt (kept sorted) so that their \
         removal is noticed later"
    );
}

#[test]
fn an_older_smaller_config_struct_takes_the_defaults_for_the_missing_fields() {
    let install = installed();
    let dir = fresh_dir("old-config");
    copy_source("c/check.h", &dir); // the C harness's CHECK macros
    let sources = [copy_source("packaging/old_config.c", &dir)];
    let exe = build_with_pkg_config(C11, &dir, &sources, &[], "tokio_bridge");
    let stdout = install.run_program(&exe);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(" passed, 0 failed") && !last.starts_with("0 "),
        "old_config.c: {stdout}"
    );
}

#[test]
fn the_header_compiles_first_and_twice_in_every_standard_under_gcc_and_clang() {
    let dir = fresh_dir("header");
    let source = copy_source("packaging/header_twice.c", &dir);
    let mut failures = Vec::new();
    for (compilers, language, standards) in [
        (["gcc", "clang"], "c", ["c99", "c11", "c17"].as_slice()),
        (["g++", "clang++"], "c++", ["c++11", "c++17"].as_slice()),
    ] {
        for compiler in compilers {
            for std in standards {
                let result = output(
                    Command::new(compiler)
                        .args(["-x", language])
                        .arg(format!("-std={std}"))
                        .args(WARNINGS)
                        .arg("-I")
                        .arg(root().join("include"))
                        .arg("-c")
                        .arg(&source)
                        .arg("-o")
                        .arg(dir.join(format!("{compiler}-{std}.o"))),
                );
                if !result.status.success() {
                    failures.push(format!(
                        "{compiler} -std={std}:\n{}",
                        String::from_utf8_lossy(&result.stderr)
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the header does not compile cleanly with {WARNINGS:?}:\n{}",
        failures.join("\n")
    );
}

/// What a header declares at file scope: (kind, name) of every macro, struct/union/enum tag,
/// enum constant, typedef, function and variable. Comments, strings and the `extern "C"`
/// block are understood; the header is not preprocessed, so nothing it includes is counted.
fn declared_names(header: &str) -> Vec<(&'static str, String)> {
    let mut names = Vec::new();
    let mut code = String::new();
    for line in strip_comments(&header.replace("\\\n", " ")).lines() {
        match line.trim_start().strip_prefix('#') {
            Some(directive) => {
                if let Some(rest) = directive.trim_start().strip_prefix("define") {
                    names.push(("macro", identifier_at(rest.trim_start())));
                }
            }
            None => code += &format!("{line}\n"),
        }
    }
    let tokens = tokenize(&code);
    let mut statement: Vec<&str> = Vec::new();
    let mut depth = 0usize;
    for token in tokens {
        match token {
            "{" if statement.ends_with(&["extern", "\"C\""]) => {
                statement.clear(); // an extern "C" block: its contents are at file scope
            }
            "}" if depth == 0 => {} // the end of the extern "C" block
            ";" if depth == 0 => {
                declare(&statement, &mut names);
                statement.clear();
            }
            _ => {
                depth = match token {
                    "{" => depth + 1,
                    "}" => depth - 1,
                    _ => depth,
                };
                statement.push(token);
            }
        }
    }
    names
}

fn is_identifier(token: &str) -> bool {
    token.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
}

fn identifier_at(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The header without its comments (string literals kept whole, newlines kept).
fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("/*") {
            let end = after.find("*/").map_or(after.len(), |i| i + 2);
            out.extend(after[..end].chars().filter(|&c| c == '\n'));
            rest = &after[end..];
        } else if rest.starts_with("//") {
            rest = &rest[rest.find('\n').unwrap_or(rest.len())..];
        } else if c == '"' {
            let end = rest[1..].find('"').map_or(rest.len(), |i| i + 2);
            out += &rest[..end];
            rest = &rest[end..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Identifiers and numbers as words, string literals whole, other characters one by one.
fn tokenize(code: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut rest = code.trim_start();
    while let Some(c) = rest.chars().next() {
        let len = if c.is_ascii_alphanumeric() || c == '_' {
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())
        } else if c == '"' {
            rest[1..].find('"').map_or(rest.len(), |i| i + 2)
        } else {
            c.len_utf8()
        };
        tokens.push(&rest[..len]);
        rest = rest[len..].trim_start();
    }
    tokens
}

/// Records the names one file-scope declaration (its tokens, without the `;`) introduces.
fn declare(statement: &[&str], names: &mut Vec<(&'static str, String)>) {
    let mut depth = 0usize;
    let mut outside = Vec::new(); // the tokens outside any braces
    for (i, &token) in statement.iter().enumerate() {
        let next = statement.get(i + 1).copied().unwrap_or_default();
        if matches!(token, "struct" | "union" | "enum") && is_identifier(next) {
            let starts = i == 0 || (i == 1 && statement[0] == "typedef");
            if starts || statement.get(i + 2) == Some(&"{") {
                names.push(("tag", next.to_string()));
            }
        }
        let in_enum = depth > 0 && statement[..i].contains(&"enum");
        if in_enum && is_identifier(token) && matches!(statement[i - 1], "{" | ",") {
            names.push(("enum constant", token.to_string()));
        }
        match token {
            "{" => depth += 1,
            "}" => depth -= 1,
            _ if depth == 0 => outside.push(token),
            _ => {}
        }
    }
    let pointer_name = outside
        .windows(4)
        .find(|w| w[0] == "(" && w[1] == "*" && is_identifier(w[2]) && w[3] == ")")
        .map(|w| w[2]);
    let before_paren = outside
        .windows(2)
        .find(|w| is_identifier(w[0]) && w[1] == "(")
        .map(|w| w[0]);
    let before_end = outside
        .split(|&t| t == "=" || t == "[")
        .next()
        .and_then(|head| head.iter().rev().find(|t| is_identifier(t)).copied());
    let declared = match (outside.first(), pointer_name, before_paren) {
        (Some(&"typedef"), Some(name), _) => Some(("typedef", name)),
        (Some(&"typedef"), None, _) => before_end.map(|name| ("typedef", name)),
        (_, Some(name), _) => Some(("variable", name)),
        (_, None, Some(name)) => Some(("function", name)),
        _ => before_end
            .filter(|name| !matches!(*name, "struct" | "union" | "enum"))
            .map(|name| ("variable", name)),
    };
    // `struct tag { ... };` declares only its tag, found above.
    let only_a_tag = outside.len() == 2 && matches!(outside[0], "struct" | "union" | "enum");
    if let (Some((kind, name)), false) = (declared, only_a_tag) {
        names.push((kind, name.to_string()));
    }
}

fn outside_the_namespace(names: &[(&'static str, String)]) -> BTreeSet<String> {
    names
        .iter()
        .filter(|(_, name)| !(name.starts_with("tb_") || name.starts_with("TB_")))
        .map(|(kind, name)| format!("{kind} {name}"))
        .collect()
}

#[test]
fn the_namespace_check_finds_every_kind_of_name() {
    let header = r#"
        #ifndef TB_GUARD_H
        #define TB_GUARD_H
        #define TB_GOOD 1
        #define BAD_MACRO 2
        # define bad_spaced(x) \
            (x)
        /* #define NOT_A_MACRO in a comment */
        struct bad_tag { int x; };
        typedef struct tb_fine { int y; } tb_fine;
        typedef int bad_typedef;
        typedef void (*bad_callback)(void *arg);
        enum bad_enum { BAD_CONSTANT, TB_FINE_CONSTANT = 2 };
        int bad_function(struct tb_fine f);
        extern int bad_variable[4];
        #ifdef __cplusplus
        extern "C" {
        #endif
        void tb_fine_function(const char *s);
        void (*bad_pointer)(void);
        #ifdef __cplusplus
        }
        #endif
        #endif
    "#;
    let names = declared_names(header);
    let expected: BTreeSet<String> = [
        "macro BAD_MACRO",
        "macro bad_spaced",
        "tag bad_tag",
        "typedef bad_typedef",
        "typedef bad_callback",
        "tag bad_enum",
        "enum constant BAD_CONSTANT",
        "function bad_function",
        "variable bad_variable",
        "variable bad_pointer",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        outside_the_namespace(&names),
        expected,
        "all names: {names:?}"
    );
    for good in ["TB_GOOD", "tb_fine", "TB_FINE_CONSTANT", "tb_fine_function"] {
        assert!(names.iter().any(|(_, n)| n == good), "{good} in {names:?}");
    }
}

#[test]
fn every_name_the_header_declares_is_in_the_tb_namespace() {
    let header = std::fs::read_to_string(root().join("include/tokio_bridge.h")).unwrap();
    let names = declared_names(&header);
    let outside = outside_the_namespace(&names);
    assert!(
        outside.is_empty(),
        "include/tokio_bridge.h declares names outside tb_/TB_: {outside:?}"
    );
    // The scan saw the header's declarations: its functions are exactly the exported symbols.
    let functions: BTreeSet<String> = names
        .iter()
        .filter(|(kind, _)| *kind == "function")
        .map(|(_, name)| name.clone())
        .collect();
    assert_eq!(
        functions,
        abi_symbols(),
        "functions declared vs abi/symbols.txt"
    );
    for (kind, name) in [
        ("macro", "TB_TOKIO_BRIDGE_H"),
        ("macro", "TB_VERSION_HEX"),
        ("tag", "tb_runtime_config"),
        ("typedef", "tb_runtime_config"),
        ("typedef", "tb_blocking_fn"),
    ] {
        assert!(
            names.iter().any(|(k, n)| *k == kind && n == name),
            "the scan missed {kind} {name}"
        );
    }
}

fn api_docs(args: &[&str]) -> Output {
    output(
        Command::new("python3")
            .arg(root().join("scripts/api_docs.py"))
            .args(args),
    )
}

#[test]
fn docs_api_md_is_generated_from_the_current_header() {
    let result = api_docs(&["--check"]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
}

#[test]
fn the_docs_generator_refuses_an_undocumented_item() {
    let dir = fresh_dir("docs");
    let header = std::fs::read_to_string(root().join("include/tokio_bridge.h")).unwrap();
    let end = header.rfind("#endif").unwrap();
    let undocumented = dir.join("undocumented.h");
    std::fs::write(
        &undocumented,
        format!(
            "{}int tb_undocumented(void);\n\n{}",
            &header[..end],
            &header[end..]
        ),
    )
    .unwrap();
    let result = api_docs(&[
        "--header",
        undocumented.to_str().unwrap(),
        "--output",
        dir.join("api.md").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("function `tb_undocumented` has no doc comment"),
        "{stderr}"
    );
    assert!(!dir.join("api.md").exists(), "nothing is written");
}

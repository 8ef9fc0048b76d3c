//! Compiles the C test programs in `tests/c/` and the examples in `c_examples/` against the
//! freshly built library and runs them. The C compiler is the one the `cc` crate finds.
//!
//! Set `TB_TEST_WRAPPER` to run every C program under a tool, for example
//! `TB_TEST_WRAPPER="valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite"`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

const WARNINGS: &[&str] = &["-Wall", "-Wextra", "-Werror", "-pedantic"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>/deps`: where `cargo test` builds `libtokio_bridge.so`, next to this test.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().to_path_buf();
    assert!(
        dir.join("libtokio_bridge.so").exists(),
        "no libtokio_bridge.so in {}",
        dir.display()
    );
    dir
}

fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn compiler(cpp: bool) -> Command {
    cc::Build::new()
        .cpp(cpp)
        .target(env!("TB_TARGET"))
        .host(env!("TB_TARGET"))
        .opt_level(1)
        .cargo_metadata(false)
        .get_compiler()
        .to_command()
}

/// Runs a command that must succeed; returns its stdout and stderr.
fn run_checked(mut command: Command, what: &str) -> (String, String) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

/// Compiles C sources into an executable linked to the library.
fn build(name: &str, sources: &[PathBuf]) -> PathBuf {
    build_with(name, sources, &["-l:libtokio_bridge.so"])
}

/// Compiles C sources into an executable with these libraries.
fn build_with(name: &str, sources: &[PathBuf], libs: &[&str]) -> PathBuf {
    let exe = out_dir().join(name);
    let lib = lib_dir();
    let mut cc = compiler(false);
    cc.arg("-std=c11")
        .args(WARNINGS)
        .arg("-g")
        .arg(format!("-I{}", root().join("include").display()))
        .arg(format!("-I{}", root().join("tests/c").display()))
        .arg(format!("-I{}", root().join("c_examples").display()))
        .args(sources)
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(libs)
        .arg("-lpthread")
        .arg("-lm");
    run_checked(cc, &format!("compiling {name}"));
    exe
}

/// One C program runs at a time: several of them measure timing on a 2-core machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs a program (under `TB_TEST_WRAPPER` if set) with extra environment variables; returns
/// its stdout and stderr.
fn run(exe: &Path, env: &[(&str, &str)]) -> (String, String) {
    run_wrapped(exe, env, true)
}

/// Like [`run`]; with `wrapped` false, never under `TB_TEST_WRAPPER`.
fn run_wrapped(exe: &Path, env: &[(&str, &str)], wrapped: bool) -> (String, String) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let wrapper = if wrapped {
        std::env::var("TB_TEST_WRAPPER").unwrap_or_default()
    } else {
        String::new()
    };
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(tool) => {
            let mut c = Command::new(tool);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    command.envs(env.iter().copied());
    run_checked(command, &exe.display().to_string())
}

/// Builds and runs `tests/c/<name>.c` with extra environment variables, checks its closing
/// "N passed, 0 failed" line, and returns its stderr.
fn c_test_with(name: &str, env: &[(&str, &str)]) -> String {
    c_test_run(name, env, true)
}

fn c_test_run(name: &str, env: &[(&str, &str)], wrapped: bool) -> String {
    let exe = build(
        name,
        &[
            root().join(format!("tests/c/{name}.c")),
            root().join("tests/c/simlib.c"),
        ],
    );
    let (stdout, stderr) = run_wrapped(&exe, env, wrapped);
    print!("{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with(" passed, 0 failed"), "{name}: {stdout}");
    assert!(!last.starts_with("0 passed"), "{name} checked nothing");
    stderr
}

fn c_test(name: &str) {
    c_test_with(name, &[]);
}

#[test]
fn c_api() {
    c_test("test_api");
}

#[test]
fn the_header_compiles_alone_as_c99_c11_and_cpp11() {
    let source = out_dir().join("header_only.c");
    std::fs::write(
        &source,
        "#include \"tokio_bridge.h\"\n#include \"tokio_bridge.h\"\nint tb_header_check;\n",
    )
    .unwrap();
    for (cpp, std) in [(false, "c99"), (false, "c11"), (true, "c++11")] {
        let mut cc = compiler(cpp);
        cc.arg(format!("-std={std}"))
            .args(WARNINGS)
            .arg("-fsyntax-only")
            .arg(format!("-I{}", root().join("include").display()));
        if cpp {
            cc.args(["-x", "c++"]);
        }
        cc.arg(&source);
        run_checked(cc, &format!("the header as {std}"));
    }
}

/// Every example compiles warning-free and runs to a zero exit status (they take a few seconds
/// each and need no input). Under `TB_TEST_WRAPPER` they are only compiled: the CPU-heavy ones
/// would take minutes under Valgrind, and the harness programs cover the same calls.
#[test]
fn every_example_compiles_and_runs() {
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root().join("c_examples"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "c"))
        .collect();
    examples.sort();
    assert!(
        examples.len() >= 16,
        "the demo and one example per scenario of the guide"
    );
    let wrapped = std::env::var_os("TB_TEST_WRAPPER").is_some();
    for source in examples {
        let name = source.file_stem().unwrap().to_str().unwrap().to_string();
        let exe = build(
            &format!("example_{name}"),
            &[source, root().join("tests/c/simlib.c")],
        );
        if !wrapped {
            let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
            run_checked(Command::new(&exe), &name);
        }
    }
}

#[test]
fn c_blocking_scenarios() {
    c_test("test_blocking");
}

#[test]
fn c_control_scenarios() {
    c_test("test_control");
}

#[test]
fn c_many_tasks_and_callback_threads() {
    c_test("test_many");
}

#[test]
fn c_completion_queues() {
    c_test("test_queue");
}

#[test]
fn c_stall_reports_probe_and_metrics() {
    let stderr = c_test_with("test_blockwatch", &[("TB_STALL_LOG", "1")]);
    let logged: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tokio-bridge: stall:"))
        .collect();
    assert_eq!(
        logged.len(),
        2,
        "TB_STALL_LOG=1 prints both reports: {stderr}"
    );
    assert!(
        logged[0].contains("timer callback") && logged[0].contains("still running"),
        "{stderr}"
    );
    assert!(
        logged[1].contains("tb-worker-0") && logged[1].ends_with("ended"),
        "{stderr}"
    );
}

/// Never under `TB_TEST_WRAPPER`: Valgrind follows the forked children and checks them for
/// leaks when they `_exit`, and a child holds its parent's heap without the threads whose
/// stacks referred to it, so everything those threads owned looks lost.
#[test]
fn c_thread_exhaustion_and_fork() {
    c_test_run("test_lifecycle", &[], false);
}

#[test]
fn c_dlclose_with_threads_running() {
    let exe = build_with(
        "test_dlopen",
        &[root().join("tests/c/test_dlopen.c")],
        &["-ldl"],
    );
    let library = lib_dir().join("libtokio_bridge.so");
    let (stdout, _) = run(&exe, &[("TB_LIB_PATH", library.to_str().unwrap())]);
    print!("{stdout}");
    assert!(stdout.ends_with(" passed, 0 failed\n"), "{stdout}");
}

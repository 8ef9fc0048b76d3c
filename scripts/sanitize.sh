#!/usr/bin/env bash
# The tests under sanitizers and checkers: the Rust tests and the C harness under
# AddressSanitizer (with LeakSanitizer) and ThreadSanitizer, the library under Miri, the C
# harness under Valgrind memcheck, and the API's argument validation under libFuzzer (with
# ASan). Zero reports is the bar: the script prints every report and exits non-zero if there
# is one. Each suppression has its reason in scripts/sanitize/*.supp.
#
# Usage: scripts/sanitize.sh [asan] [tsan] [miri] [valgrind] [fuzz]     (none: all five)
#   TB_MIRI_SLOW=1      also runs the tests Miri takes minutes over
#   TB_FUZZ_SECONDS=N   how long to fuzz (default 30)
#
# Installs what it needs: the nightly toolchain with rust-src and miri (rustup), cargo-fuzz
# (cargo install), clang with its compiler-rt and valgrind (apt). Each checker builds into its
# own target/sanitize/<name> (the fuzzer into fuzz/target) and logs to target/sanitize/<name>.log.
# The C programs are compiled with clang and -fsanitize=...: the C harness takes CC and CFLAGS
# through the cc crate. Under TSan they are linked against Rust's own TSan runtime, because the
# library's instrumentation (Rust's LLVM) calls entry points clang 14's runtime lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=x86_64-unknown-linux-gnu
out=$root/target/sanitize
mkdir -p "$out"
results=()
status=0

need_nightly() {
  if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
  fi
  rustup component add rust-src miri --toolchain nightly >/dev/null 2>&1
}

need_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

# run NAME: runs the checker's tests (the function NAME_tests, given a directory for its
# reports: the sanitizers' log_path), then counts the tests that passed and the reports.
run() {
  local name=$1 reports=$out/reports/$1 log=$out/$1.log started=$SECONDS ok=1
  rm -rf "$reports"
  mkdir -p "$reports"
  echo "== $name"
  note=""
  "${name}_tests" "$reports" >"$log" 2>&1 || ok=0
  local passed found
  passed=$( (grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" || true) |
    awk '{n += $4} END {print n + 0}')
  found=$(find "$reports" -type f -size +0 | wc -l)
  found=$((found + $(grep -c '^error: Undefined Behavior' "$log" || true)))
  local what="$passed tests passed$note"
  [[ $name == fuzz ]] && what=$note
  results+=("$name: $what, $found reports, $((SECONDS - started)) s")
  if ((ok == 0 || found > 0)); then
    status=1
    grep -E '^(test .*FAILED|error)' "$log" | head -n 40 || true
    # What each failing test printed (libtest's "---- name stdout ----" sections): the panic
    # message that says what went wrong.
    awk '/^---- .* ----$/ {p = 1} /^failures:$/ {p = 0} p' "$log" | head -n 80
    find "$reports" -type f -size +0 -exec cat {} + | head -n 200
    echo "== $name FAILED (full log: $log)"
  fi
  echo "${results[-1]}"
}

# The Rust test binaries the sanitizers run: every one but the packaging tests (they build a
# release library with the stable toolchain).
tests=(--lib --test api --test queue --test observe --test model --test stress --test c_programs
  --test regressions)

asan_tests() {
  # Frame pointers, so that leak stacks show every frame the suppressions name.
  local flags="-fsanitize=address -fno-omit-frame-pointer"
  RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes" CARGO_TARGET_DIR="$out/address" \
    CC=clang CXX=clang++ CFLAGS="$flags" CXXFLAGS="$flags" \
    ASAN_OPTIONS="log_path=$1/asan:detect_leaks=1" \
    LSAN_OPTIONS="log_path=$1/lsan:suppressions=$root/scripts/sanitize/lsan.supp:print_suppressions=0" \
    TB_STRESS_JOBS=200000 TB_STRESS_TIMERS=20000 TB_STRESS_BOUNDED=20000 TB_STRESS_SANITIZER=1 \
    cargo +nightly test --target "$target" "${tests[@]}" --no-fail-fast
}

asan() {
  need_nightly
  need_packages clang libclang-rt-14-dev
  run asan
}

tsan_tests() {
  local runtime cflags
  runtime=$(rustc +nightly --print sysroot)/lib/rustlib/$target/lib/librustc-nightly_rt.tsan.a
  cflags="-fsanitize=thread -Qunused-arguments -fno-sanitize-link-runtime -rdynamic"
  cflags+=" -Wl,--whole-archive $runtime -Wl,--no-whole-archive -ldl -lrt"
  RUSTFLAGS="-Zsanitizer=thread" CARGO_TARGET_DIR="$out/thread" \
    CC=clang CXX=clang++ CFLAGS="$cflags" CXXFLAGS="-fsanitize=thread" \
    TSAN_OPTIONS="log_path=$1/tsan:suppressions=$root/scripts/sanitize/tsan.supp" \
    TB_STRESS_JOBS=100000 TB_STRESS_TIMERS=10000 TB_STRESS_BOUNDED=10000 TB_STRESS_SANITIZER=1 \
    cargo +nightly test -Zbuild-std --target "$target" "${tests[@]}" --no-fail-fast
}

tsan() {
  need_nightly
  need_packages clang
  run tsan
}

miri_tests() {
  # Tests Miri cannot run are listed, with the reason, in scripts/sanitize/miri-skip.txt; the
  # slow ones run with TB_MIRI_SLOW=1.
  local skips=() name reason
  while read -r name reason; do
    [[ -z $name || $name == \#* ]] && continue
    [[ ${TB_MIRI_SLOW:-} == 1 && $reason == slow:* ]] && continue
    skips+=(--skip "$name")
  done <"$root/scripts/sanitize/miri-skip.txt"
  # Leaks are LeakSanitizer's job (with the reasons in lsan.supp): the tests leak probes on
  # purpose, and Miri has no suppressions. Miri sees no environment but what it is told.
  CARGO_TARGET_DIR="$out/miri" TB_MODEL_SEQUENCES=5 \
    MIRIFLAGS="-Zmiri-ignore-leaks -Zmiri-env-forward=TB_MODEL_SEQUENCES" \
    cargo +nightly miri test --lib --test api --test queue --test observe --test model \
    --no-fail-fast -- "${skips[@]}"
}

miri() {
  need_nightly
  run miri
}

valgrind_tests() {
  # --fair-sched=yes: Valgrind runs one thread at a time, and its default lock hand-off can keep
  # a thread that just woke others off the CPU for milliseconds. Two checks of the C harness
  # (tests/c/test_many.c:102, registering a completion callback on a 5 ms timer after starting
  # it) race that registration against the timer and failed 6 runs in 8 that way; with the
  # fair (FIFO) hand-off, 14 in 14 passed.
  local ok=0 runs
  TB_TEST_WRAPPER="valgrind --fair-sched=yes --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite --log-file=$1/vg.%p" \
    cargo test --test c_programs || ok=1
  runs=$(find "$1" -name 'vg.*' | wc -l)
  note=" ($runs program runs)"
  # A clean run's log says so; only the others stay, as reports.
  grep -l 'ERROR SUMMARY: 0 errors' "$1"/vg.* | xargs -r rm
  return $ok
}

valgrind() {
  need_packages valgrind
  run valgrind
}

fuzz_tests() {
  local log=$out/fuzz-run.log
  (cd fuzz && LSAN_OPTIONS="suppressions=$root/scripts/sanitize/lsan.supp:print_suppressions=0" \
    cargo +nightly fuzz run api_calls -- -max_total_time="${TB_FUZZ_SECONDS:-30}" \
    -max_len=1024 -len_control=0 -print_final_stats=1 -artifact_prefix="$1/") >"$log" 2>&1
  local status=$?
  cat "$log"
  note="$(grep -o 'number_of_executed_units: [0-9]*' "$log" | awk '{print $2}') executions"
  return $status
}

fuzz() {
  need_nightly
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
  run fuzz
}

checkers=("$@")
((${#checkers[@]})) || checkers=(asan tsan miri valgrind fuzz)
for checker in "${checkers[@]}"; do
  case $checker in
  asan | tsan | miri | valgrind | fuzz) "$checker" ;;
  *)
    echo "unknown checker: $checker (asan, tsan, miri, valgrind, fuzz)" >&2
    exit 2
    ;;
  esac
done
echo "== summary"
printf '%s\n' "${results[@]}"
exit "$status"

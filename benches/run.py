#!/usr/bin/env python3
"""The benchmark suite: tokio-bridge from C against native Tokio, libuv, GLib and pthreads.

    python3 benches/run.py              the full suite (10.5 minutes on 2 cores under a load
                                        average of 6-17 from other jobs; less when quiet)
    python3 benches/run.py --quick      the CI guard: a smaller suite, tokio-bridge and Tokio
                                        only, that fails when a ratio falls below its floor in
                                        benches/floors.toml (about 20 seconds)

Options: --runs N (rounds, default 5), --out PREFIX (writes PREFIX.md and PREFIX.csv; default
benches/results/bench-<time>), --only CASE[,CASE...] (only the cases whose id starts so),
--floors FILE (the floors of --quick, instead of benches/floors.toml).

It builds what it measures first: the release library (cargo build --release), the native
Tokio program (benches/native, its own package and lock file, into target/bench-native) and the
C programs (benches/Makefile, into target/bench; they need libuv1-dev and libglib2.0-dev, which
it installs with apt-get when missing and run as root).

Every measurement is a separate process running one peer on one case. A round runs every case
once per peer, peers in a rotating order; rounds repeat. Each figure is the median of the
rounds with the min-max range; a ratio is the median of the per-round ratios of tokio-bridge to
a peer measured in the same round, oriented so that above 1 means tokio-bridge is ahead.
"""

import argparse
import csv
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHES = os.path.join(ROOT, "benches")
C_BIN = os.path.join(ROOT, "target", "bench")
NATIVE_TARGET = os.path.join(ROOT, "target", "bench-native")
NATIVE_MANIFEST = os.path.join(BENCHES, "native", "Cargo.toml")
FLOORS = os.path.join(BENCHES, "floors.toml")

PROGRAMS = {
    "tb": os.path.join(C_BIN, "bench_tb"),
    "tokio": os.path.join(NATIVE_TARGET, "release", "tb-bench-native"),
    "uv": os.path.join(C_BIN, "bench_uv"),
    "glib": os.path.join(C_BIN, "bench_glib"),
    "pthread": os.path.join(C_BIN, "bench_pthread"),
    "condvar": os.path.join(C_BIN, "bench_pthread"),
    "spin": os.path.join(C_BIN, "bench_pthread"),
}
# The pthread program names its modes after the peer.
MODES = {
    ("pthread", "roundtrip"): "create",
    ("condvar", "roundtrip"): "condvar",
    ("spin", "roundtrip"): "spin",
}
PEER_NAMES = {
    "tb": "tokio-bridge",
    "tokio": "Tokio",
    "uv": "libuv",
    "glib": "GLib",
    "pthread": "pthread",
    "condvar": "condvar",
    "spin": "spin",
}
PEER_ORDER = list(PEER_NAMES)
RATIO_PEERS = ("tokio", "uv")
# Variables that would change a peer's configuration behind the suite's back.
CLEARED_ENV = ("UV_THREADPOOL_SIZE", "TOKIO_WORKER_THREADS", "TB_STALL_LOG", "RUST_BACKTRACE")

FULL = {
    "rt_n": 20000, "rt_warmup": 1000, "noop_n": 1_000_000, "window": 10_000,
    "sleep_n": 25_600, "timers_n": 1_000_000, "timers_max_ms": 1000, "calls_n": 2_000_000,
    "idle_ms": 1000, "timeout": 600,
}
QUICK = {
    "rt_n": 2000, "rt_warmup": 200, "noop_n": 100_000, "window": 10_000,
    "sleep_n": 6400, "timers_n": 100_000, "timers_max_ms": 200, "calls_n": 500_000,
    "idle_ms": 300, "timeout": 120,
}


@dataclass
class Case:
    """One piece of work, run by each of its peers once per round."""
    id: str
    peers: dict  # peer -> argv

    def primary(self):
        return {"roundtrip": "rt_p50_us", "complete": "cb_p50_us", "sleep": "kjobs_per_s",
                "timers": "wall_s", "calls": "poll_ns", "idle": "idle_cpu_ms_per_s"}.get(
                    self.id.split("-")[0], "mops")


@dataclass
class Row:
    """One line of the results: a metric of a case, for every peer that ran it."""
    id: str
    section: str
    label: str
    case: str
    metric: str
    unit: str
    better: str  # "lower" or "higher"


def count_label(n):
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def make_case(case_id, mode, peers, **params):
    argv = {}
    for peer in peers:
        argv[peer] = [PROGRAMS[peer], MODES.get((peer, mode), mode)] + [
            f"{key}={value}" for key, value in params.items()]
    return Case(case_id, argv)


NOOP_CONFIGS = [(threads, window) for threads in (0, 4, 2) for window in ("w", "all")]


def noop_case_id(threads, window):
    return f"noop-t{threads}-{window}"


def plan(size):
    """The cases and the rows of the suite at the given size."""
    jobs, window = size["noop_n"], size["window"]
    pools = ("tb", "tokio", "uv", "glib")
    cases = [
        make_case("roundtrip", "roundtrip", ("tb", "tokio", "uv", "glib", "pthread", "condvar",
                                            "spin"), n=size["rt_n"], warmup=size["rt_warmup"]),
        make_case("complete", "complete", ("tb",), n=size["rt_n"], warmup=size["rt_warmup"]),
    ]
    for threads, w in NOOP_CONFIGS:
        cases.append(make_case(noop_case_id(threads, w), "noop", pools, n=jobs,
                               window=window if w == "w" else jobs, threads=threads))
    cases += [
        make_case("sleep", "sleep", pools + ("pthread",), n=size["sleep_n"], threads=64,
                  sleep_us=1000),
        make_case("timers", "timers", ("tb", "tokio", "uv"), n=size["timers_n"], min_ms=10,
                  max_ms=size["timers_max_ms"]),
        make_case("calls", "calls", ("tb", "tokio"), n=size["calls_n"]),
        make_case("idle", "idle", ("tb", "tokio"), ms=size["idle_ms"], burst=10_000),
    ]

    a = "(a) Round trip: submit one no-op job, wait for it (us)"
    b = f"(b) Throughput of {count_label(jobs)} no-op jobs"
    c = f"(c) {count_label(size['sleep_n'])} jobs sleeping 1 ms, 64 threads"
    d = (f"(d) {count_label(size['timers_n'])} concurrent timers, random delays "
         f"10-{size['timers_max_ms']} ms")
    e = "(e) Wake-up latency, from the job's end (us)"
    f = "(f) Calls that do no work (ns per call)"
    g = "(g) Peak threads (besides the main thread)"
    h = "(h) Idle CPU after a burst of 10k jobs"
    rows = []
    for stat in ("p50", "p99", "mean"):
        rows.append(Row(f"roundtrip_{stat}", a, stat, "roundtrip", f"rt_{stat}_us", "us",
                        "lower"))
    rows.append(Row("roundtrip_cpu", a, "CPU per round trip", "roundtrip", "cpu_us_per_op",
                    "us", "lower"))
    for threads, w in NOOP_CONFIGS:
        config = "default config" if threads == 0 else f"{threads} threads"
        outstanding = (f"window {count_label(window)}" if w == "w"
                       else f"all {count_label(jobs)} outstanding")
        case_id = noop_case_id(threads, w)
        key = f"noop_t{threads}_{'window' if w == 'w' else 'all'}"
        rows.append(Row(key, b, f"{config}, {outstanding}: M jobs/s", case_id, "mops",
                        "M/s", "higher"))
        rows.append(Row(f"{key}_cpu", b, f"{config}, {outstanding}: CPU s", case_id, "cpu_s",
                        "s", "lower"))
        rows.append(Row(f"threads_{key}", g, f"{config}, {outstanding}", case_id, "threads",
                        "threads", "lower"))
    rows += [
        Row("sleep_rate", c, "k jobs/s", "sleep", "kjobs_per_s", "k/s", "higher"),
        Row("sleep_efficiency", c, "fraction of the ideal 64 jobs/ms", "sleep", "efficiency",
            "", "higher"),
        Row("threads_sleep", g, "1 ms sleeping jobs, 64 threads", "sleep", "threads",
            "threads", "lower"),
        Row("timers_wall", d, "wall time, first start to last fire (s)", "timers", "wall_s",
            "s", "lower"),
        Row("timers_submit", d, "time to start them all (s)", "timers", "submit_s", "s",
            "lower"),
        Row("timers_bytes", d, "bytes per timer (peak RSS growth / timers)", "timers",
            "bytes_per_timer", "B", "lower"),
        Row("timers_late_mean", d, "lateness, mean (ms)", "timers", "late_mean_ms", "ms",
            "lower"),
        Row("timers_late_max", d, "lateness, max (ms)", "timers", "late_max_ms", "ms",
            "lower"),
        Row("threads_timers", g, "timers", "timers", "threads", "threads", "lower"),
    ]
    for stat in ("p50", "p99", "mean"):
        rows.append(Row(f"wake_{stat}", e, f"the waiting thread runs again, {stat}",
                        "roundtrip", f"wake_{stat}_us", "us", "lower"))
    for stat in ("p50", "p99", "mean"):
        rows.append(Row(f"callback_{stat}", e, f"completion callback runs, {stat}", "complete",
                        f"cb_{stat}_us", "us", "lower"))
    rows += [
        Row("poll", f, "tb_task_poll on a live task (Tokio: JoinHandle::is_finished)", "calls",
            "poll_ns", "ns", "lower"),
        Row("poll_2threads", f, "the same, 2 threads polling one task at once", "calls",
            "poll_2threads_ns", "ns", "lower"),
        Row("outcome", f, "tb_task_outcome on a live task", "calls", "outcome_ns", "ns",
            "lower"),
        Row("bad_handle", f, "tb_task_poll on a released handle", "calls", "bad_handle_ns",
            "ns", "lower"),
        Row("version", f, "tb_version (the cost of any call into the library)", "calls",
            "version_ns", "ns", "lower"),
        Row("idle_cpu", h, "CPU ms per second while idle", "idle", "idle_cpu_ms_per_s", "ms/s",
            "lower"),
    ]
    return cases, rows


def sh(argv, **kwargs):
    print("+ " + " ".join(argv), file=sys.stderr, flush=True)
    subprocess.run(argv, check=True, cwd=ROOT, **kwargs)


def ensure_c_libraries():
    """libuv and GLib development files, installed with apt-get when missing."""
    def present():
        return subprocess.run(["pkg-config", "--exists", "libuv", "glib-2.0"],
                              capture_output=True).returncode == 0
    try:
        if present():
            return
    except FileNotFoundError:
        pass
    if os.geteuid() != 0:
        sys.exit("benches need libuv and GLib: apt-get install libuv1-dev libglib2.0-dev "
                 "pkg-config make")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sh(["apt-get", "update", "-qq"], env=env)
    sh(["apt-get", "install", "-y", "-qq", "libuv1-dev", "libglib2.0-dev", "pkg-config",
        "make"], env=env)
    if not present():
        sys.exit("libuv or GLib still missing after apt-get install")


def locked_version(lock, package):
    text = open(lock).read()
    found = re.search(r'name = "%s"\nversion = "([^"]+)"' % re.escape(package), text)
    if not found:
        sys.exit(f"{lock} has no {package}")
    return found.group(1)


def build():
    ensure_c_libraries()
    ours = locked_version(os.path.join(ROOT, "Cargo.lock"), "tokio")
    native = locked_version(os.path.join(BENCHES, "native", "Cargo.lock"), "tokio")
    if ours != native:
        sys.exit(f"Cargo.lock has tokio {ours} but benches/native/Cargo.lock has {native}: "
                 f"pin tokio = \"={ours}\" in benches/native/Cargo.toml")
    sh(["cargo", "build", "--release", "--quiet"])
    sh(["cargo", "build", "--release", "--quiet", "--manifest-path", NATIVE_MANIFEST,
        "--target-dir", NATIVE_TARGET])
    sh(["make", "--quiet", "-C", BENCHES])
    return ours


def output(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        return "?"


def machine(tokio_version):
    model = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1))
    version = re.search(r'^version = "([^"]+)"', open(os.path.join(ROOT, "Cargo.toml")).read(),
                        re.M).group(1)
    commit = output(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    return {
        "CPU": f"{model}, {os.cpu_count()} cores",
        "memory": f"{mem_kib / 1024 / 1024:.0f} GiB",
        "OS": f"{platform.system()} {platform.release()}",
        "tokio-bridge": f"{version} ({commit})",
        "Tokio": tokio_version,
        "libuv": output(["pkg-config", "--modversion", "libuv"]),
        "GLib": output(["pkg-config", "--modversion", "glib-2.0"]),
        "compilers": f"{output(['rustc', '--version'])}; "
                     f"{output(['cc', '--version']).splitlines()[0]}",
    }


def run_one(argv, timeout):
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        sys.exit(f"timed out after {timeout} s: {' '.join(argv)}")
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(argv)}\n{done.stdout}{done.stderr}")
    metrics = {}
    for line in done.stdout.splitlines():
        name, value = line.split()
        metrics[name] = float(value)
    return metrics


def measure(cases, runs, timeout, results):
    """Runs every case `runs` times, peers in a rotating order; appends to `results`."""
    for round_no in range(runs):
        for case in cases:
            peers = list(case.peers)
            shift = round_no % len(peers)
            for peer in peers[shift:] + peers[:shift]:
                metrics = run_one(case.peers[peer], timeout)
                results.setdefault((case.id, peer), []).append(metrics)
                print(f"[{round_no + 1}/{runs}] {case.id:<14} {PEER_NAMES[peer]:<13} "
                      f"{case.primary()} {metrics.get(case.primary(), float('nan')):.4g}",
                      file=sys.stderr, flush=True)


def values(results, row, peer):
    return [m[row.metric] for m in results.get((row.case, peer), []) if row.metric in m]


def ratio(results, row, peer):
    """Median over rounds of tokio-bridge's advantage over `peer` (> 1: tokio-bridge ahead)."""
    ours, theirs = values(results, row, "tb"), values(results, row, peer)
    pairs = [(a, b) for a, b in zip(ours, theirs)
             if (b if row.better == "higher" else a) > 0]
    if not pairs:
        return None
    return statistics.median(a / b if row.better == "higher" else b / a for a, b in pairs)


def fmt(value):
    if value is None:
        return "—"
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def cell(vals):
    if not vals:
        return "—"
    return f"{fmt(statistics.median(vals))} ({fmt(min(vals))}–{fmt(max(vals))})"


def report(rows, results, info, runs, command, started, elapsed, load):
    """The markdown text and the CSV rows of the results."""
    lines = [
        "# tokio-bridge benchmarks",
        "",
        f"Machine: {info['CPU']}, {info['memory']}, {info['OS']}.  ",
        f"Versions: tokio-bridge {info['tokio-bridge']}, Tokio {info['Tokio']}, "
        f"libuv {info['libuv']}, GLib {info['GLib']}; {info['compilers']}.  ",
        f"Run: `{command}`, {started}, {elapsed / 60:.1f} min, {runs} interleaved rounds; "
        f"load average {load[0]:.2f} at the start, {load[1]:.2f} at the end.",
        "",
        "Each cell: median of the rounds (min–max). A ratio is the median of the per-round "
        "ratios of tokio-bridge to that peer: above 1, tokio-bridge is ahead (faster, fewer "
        "bytes, fewer threads); below 1, behind.",
    ]
    table = []
    for section in sorted({row.section for row in rows}):
        section_rows = [r for r in rows if r.section == section]
        peers = [p for p in PEER_ORDER if any(values(results, r, p) for r in section_rows)]
        if not peers:
            continue
        ratio_peers = [p for p in RATIO_PEERS if p in peers and "tb" in peers]
        head = ["", *[PEER_NAMES[p] for p in peers],
                *[f"vs {PEER_NAMES[p]}" for p in ratio_peers]]
        lines += ["", f"## {section}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for row in section_rows:
            cells = [row.label, *[cell(values(results, row, p)) for p in peers]]
            for p in ratio_peers:
                r = ratio(results, row, p)
                cells.append("—" if r is None else f"{r:.2f}×")
            lines.append("| " + " | ".join(cells) + " |")
            for p in peers:
                vals = values(results, row, p)
                if not vals:
                    continue
                ratios = {q: ratio(results, row, q) if p == "tb" else None for q in RATIO_PEERS}
                table.append({
                    "figure": row.id, "section": section, "row": row.label,
                    "metric": row.metric, "unit": row.unit, "better": row.better,
                    "peer": PEER_NAMES[p], "median": statistics.median(vals),
                    "min": min(vals), "max": max(vals), "runs": len(vals),
                    "values": " ".join(f"{v:.6g}" for v in vals),
                    "ratio_vs_tokio": "" if ratios["tokio"] is None else f"{ratios['tokio']:.4f}",
                    "ratio_vs_libuv": "" if ratios["uv"] is None else f"{ratios['uv']:.4f}",
                })
    return "\n".join(lines) + "\n", table


def write(prefix, markdown, table):
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".md", "w") as f:
        f.write(markdown)
    with open(prefix + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    print(f"wrote {prefix}.md and {prefix}.csv", file=sys.stderr)


def load_floors(path, rows):
    with open(path, "rb") as f:
        floors = tomllib.load(f)["floors"]
    by_id = {row.id: row for row in rows}
    for key in floors:
        if key not in by_id:
            sys.exit(f"{path}: no figure {key} (figures: {', '.join(by_id)})")
    return {key: (by_id[key], float(floor)) for key, floor in floors.items()}


def guard(floors, cases, results, runs, timeout):
    """Checks every floor. The cases of a check that fails are measured again once (the new
    rounds replace the old in `results`), and the check fails only if it fails again.
    Returns the lines to print and the number of failures."""
    def below(key):
        row, floor = floors[key]
        r = ratio(results, row, "tokio")
        return r is None or r < floor

    retried = [key for key in floors if below(key)]
    if retried:
        again = {floors[key][0].case for key in retried}
        print(f"below the floor: {', '.join(retried)}; measuring {', '.join(sorted(again))} "
              f"again", file=sys.stderr)
        retry = {}
        measure([c for c in cases if c.id in again], runs, timeout, retry)
        results.update(retry)
    lines = ["Guard: tokio-bridge / native Tokio in the same run (> 1: tokio-bridge ahead)"]
    failures = 0
    for key, (row, floor) in floors.items():
        r = ratio(results, row, "tokio")
        failed = below(key)
        failures += failed
        shown = "—" if r is None else f"{r:.3f}"
        lines.append(f"  {'FAIL' if failed else 'ok  '} {key:<24} ratio {shown:>7}  "
                     f"floor {floor:.3f}{'  (measured twice)' if key in retried else ''}")
    lines.append(f"guard: {len(floors) - failures} passed, {failures} failed")
    return lines, failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the CI guard: small sizes, tokio-bridge and Tokio, floors checked")
    parser.add_argument("--floors", default=FLOORS,
                        help="the floors of --quick (default benches/floors.toml)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--out", help="write OUT.md and OUT.csv (default benches/results/...)")
    parser.add_argument("--only", help="only cases whose id starts with one of these, "
                        "comma-separated (roundtrip, complete, noop, sleep, timers, calls, idle)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    size = QUICK if args.quick else FULL
    cases, rows = plan(size)
    floors = None
    if args.quick:
        floors = load_floors(args.floors, rows)
        needed = {row.case for row, _ in floors.values()}
        cases = [Case(c.id, {p: c.peers[p] for p in ("tb", "tokio")})
                 for c in cases if c.id in needed]
    if args.only:
        prefixes = tuple(args.only.split(","))
        cases = [c for c in cases if c.id.startswith(prefixes)]
        if not cases:
            parser.error(f"--only {args.only} selects no case")

    tokio_version = build()
    info = machine(tokio_version)
    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    prefix = args.out or os.path.join(
        BENCHES, "results", f"bench-{stamp}{'-quick' if args.quick else ''}")
    print(f"Machine: {info['CPU']}, {info['memory']}, {info['OS']}", flush=True)

    load_start = os.getloadavg()[0]
    begin = time.monotonic()
    results = {}
    measure(cases, args.runs, size["timeout"], results)
    verdict, failures = [], 0
    if floors:
        verdict, failures = guard(floors, cases, results, args.runs, size["timeout"])
    elapsed = time.monotonic() - begin

    command = " ".join(["python3 benches/run.py", *sys.argv[1:]])
    markdown, table = report(rows, results, info, args.runs, command,
                             started.strftime("%Y-%m-%d %H:%M UTC"), elapsed,
                             (load_start, os.getloadavg()[0]))
    print("\n" + markdown)
    write(prefix, markdown, table)
    print("\n".join(verdict))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

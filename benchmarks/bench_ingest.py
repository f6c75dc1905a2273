"""Ingest benchmark: `fuserank ingest` on synthetic MyAnimeList files at full scale, beside its floor.

    python benchmarks/bench_ingest.py                 # 10M, 57M, 57M shuffled, 57M at --min-user-ratings 400,
                                                      # 109M animelist (about 10 minutes on 2 cores)
    python benchmarks/bench_ingest.py --small         # the same cases at 1-3M rows (about a minute)
    python benchmarks/bench_ingest.py --rows 20000000 --animelist-rows 0 --plot

Every case runs as child processes, one after the other, so each peak RSS is that process's alone
(``os.wait4`` returns the child's own rusage: ``ru_maxrss``, user and system CPU):

* floor: a plain ``pyarrow.csv.open_csv`` pass over the same file with the ingest's column types
  and block size (reading and parsing, nothing kept) — what no ingest can beat;
* ingest: ``python -m fuserank ingest`` into a fresh directory (its stage log lines are kept);
* optionally ``--baseline-ref REF``: the ingest of an older commit (its ``training/ingest.py`` and
  ``training/readers.py`` run from a temporary package) on the same file.

Targets (issue 4): >= 2M rows/s end to end and peak RSS <= 4 GiB, grouped or shuffled. Files are
generated with ``benchmarks/generate.py`` under ``--data-dir`` (default /tmp/fuserank-bench, never
the repository) and reused when their summary matches; generated files larger than
``--keep-max-gb`` are deleted after their case. Results go to ``benchmarks/results/ingest.json``
(and ``ingest.png`` with ``--plot``). The load average is recorded beside every figure: on a shared
machine, wall time is only comparable at similar load, CPU seconds a little more so.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
TARGET_ROWS_PER_S = 2_000_000
TARGET_RSS_BYTES = 4 << 30
FULL_USERS, FULL_ANIME, FULL_ROWS = 310_000, 17_500, 57_000_000
ANIMELIST_USERS = 325_000
STAGE_RE = re.compile(r"INFO fuserank\.ingest: (?P<stage>[^:]+): (?P<wall>[\d.]+)s \(cpu user (?P<user>[\d.]+)s, "
                      r"sys (?P<sys>[\d.]+)s\)")

FLOOR_CODE = """
import sys, time, json
import pyarrow as pa, pyarrow.csv as pacsv
from fuserank.training import readers
from fuserank.schemas import ingest as S
path = sys.argv[1]
with open(path, 'rb') as stream:
    header = readers.read_header(stream, path)
    types = {S.USER_COL: pa.int64(), S.ANIME_COL: pa.int64(), S.RATING_COL: pa.int8()}
    rows = 0
    for batch in pacsv.open_csv(stream, read_options=pacsv.ReadOptions(column_names=header,
                                block_size=readers.BLOCK_BYTES, use_threads=True),
                                convert_options=pacsv.ConvertOptions(column_types=types,
                                include_columns=list(S.RATING_COLUMNS))):
        rows += batch.num_rows
print(json.dumps({"rows": rows}))
"""


# ---------------------------------------------------------------- measuring a child process

def run_measured(argv: list[str], log_path: Path, env: dict | None = None) -> dict:
    """Run ``argv`` to completion; wall seconds, CPU seconds and peak RSS of that child alone."""
    load_before = os.getloadavg()
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": proc.returncode,
        "wall_s": round(wall, 2),
        "cpu_user_s": round(usage.ru_utime, 2),
        "cpu_sys_s": round(usage.ru_stime, 2),
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def stages(log_text: str) -> dict:
    return {m["stage"]: {"wall_s": float(m["wall"]), "cpu_user_s": float(m["user"]), "cpu_sys_s": float(m["sys"])}
            for m in STAGE_RE.finditer(log_text)}


# ---------------------------------------------------------------- cases

def cases(a) -> list[dict]:
    if a.small:
        rows, big, animelist = a.rows or [1_000_000], a.big_rows or 2_000_000, a.animelist_rows or 3_000_000
    else:
        rows = a.rows if a.rows else [10_000_000]
        big = FULL_ROWS if a.big_rows is None else a.big_rows
        animelist = 109_000_000 if a.animelist_rows is None else a.animelist_rows
    out = [_case("rating_complete", n, False, a.min_user_ratings) for n in rows]
    if big:
        out.append(_case("rating_complete", big, False, a.min_user_ratings))
        out.append(_case("rating_complete", big, True, a.min_user_ratings))
        if a.default_threshold_case:
            out.append(_case("rating_complete", big, False, 400))
    if animelist:
        out.append(_case("animelist", animelist, False, a.min_user_ratings))
    if a.only:
        unknown = set(a.only) - {c["name"] for c in out}
        if unknown:
            raise SystemExit(f"--only: no case named {sorted(unknown)}; cases: {[c['name'] for c in out]}")
        out = [c for c in out if c["name"] in a.only]
    return out


def _case(layout: str, rows: int, shuffled: bool, min_user_ratings: int) -> dict:
    share = rows / FULL_ROWS
    users = ANIMELIST_USERS if layout == "animelist" and rows >= 100_000_000 else max(1_000, round(FULL_USERS * share))
    users = min(users, FULL_USERS if layout == "rating_complete" else ANIMELIST_USERS)
    stem = f"{layout}_{rows // 1_000_000}M" + (f"{rows % 1_000_000 // 1000}k" if rows % 1_000_000 else "") + (
        "_shuffled" if shuffled else "")
    name = stem + ("" if min_user_ratings == 1 else f"_min{min_user_ratings}")
    return {"name": name, "stem": stem, "layout": layout, "rows": rows, "shuffled": shuffled, "users": users,
            "anime": FULL_ANIME, "min_user_ratings": min_user_ratings}


def ensure_data(case: dict, data_dir: Path, seed: int) -> tuple[Path, Path, dict | None]:
    """The case's ratings and anime files, generated unless a matching pair is already there."""
    path, anime = data_dir / f"{case['stem']}.csv", data_dir / f"{case['stem']}.anime.csv"
    summary_path = Path(f"{path}.json")
    want = {k: case[k] for k in ("layout", "rows", "users", "anime")} | {"shuffled": case["shuffled"], "seed": seed}
    if path.exists() and anime.exists() and summary_path.exists():
        have = json.loads(summary_path.read_text())
        if all(have.get(k) == v for k, v in want.items()):
            return path, anime, None
    argv = [sys.executable, str(HERE / "generate.py"), "--out", str(path), "--anime-out", str(anime),
            "--rows", str(case["rows"]), "--users", str(case["users"]), "--anime", str(case["anime"]),
            "--layout", case["layout"], "--seed", str(seed)] + (["--shuffle"] if case["shuffled"] else [])
    print(f"  generating {path.name} ...", flush=True)
    measured = run_measured(argv, data_dir / f"{case['stem']}.generate.log")
    if measured["returncode"]:
        raise SystemExit(f"generate.py failed; see {data_dir / (case['stem'] + '.generate.log')}")
    return path, anime, measured | {"summary": json.loads(summary_path.read_text())}


def baseline_package(ref: str, into: Path) -> Path:
    """training/ingest.py and readers.py of ``ref`` as a package ``fr_baseline`` under ``into``."""
    pkg = into / "fr_baseline"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name in ("ingest", "readers"):
        text = subprocess.run(["git", "show", f"{ref}:training/{name}.py"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        text = text.replace("from fuserank.training import readers", "from fr_baseline import readers")
        (pkg / f"{name}.py").write_text(text)
    return into


BASELINE_CODE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
sys.path.insert(0, sys.argv[1])
from fr_baseline.ingest import ingest
ingest(sys.argv[2], sys.argv[3], anime=sys.argv[4], min_user_ratings=int(sys.argv[5]))
"""


def run_case(case: dict, a, baseline_dir: Path | None) -> dict:
    data_dir = Path(a.data_dir)
    path, anime, generated = ensure_data(case, data_dir, a.seed)
    size = path.stat().st_size
    result = dict(case, file_bytes=size, generated=generated)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)

    floor = run_measured([sys.executable, "-c", FLOOR_CODE, str(path)], logs / f"{case['name']}.floor.log")
    floor["rows_per_s"] = round(case["rows"] / floor["wall_s"])
    result["floor_pyarrow_read"] = floor

    out = data_dir / f"out-{case['name']}"
    runs = []
    for attempt in range(a.repeat):
        shutil.rmtree(out, ignore_errors=True)
        log_path = logs / f"{case['name']}.ingest{attempt or ''}.log"
        run = run_measured([sys.executable, "-m", "fuserank", "ingest", "--ratings", str(path), "--anime", str(anime),
                            "--out", str(out), "--min-user-ratings", str(case["min_user_ratings"])],
                           log_path, env=_env_without_redis())
        text = log_path.read_text(errors="replace")
        if run["returncode"]:
            raise SystemExit(f"ingest failed ({run['returncode']}); see {log_path}:\n{text[-2000:]}")
        manifest = json.loads((out / "manifest.json").read_text())
        run["rows_per_s"] = round(case["rows"] / run["wall_s"])
        run["rows_per_cpu_s"] = round(case["rows"] / (run["cpu_user_s"] + run["cpu_sys_s"]))
        run["stages"] = stages(text)
        run["counts"] = manifest["counts"]
        run["content_hash"] = manifest["content_hash"]
        run["output_bytes"] = sum(p.stat().st_size for p in out.iterdir())
        runs.append(run)
    shutil.rmtree(out, ignore_errors=True)
    ingest = dict(min(runs, key=lambda r: r["wall_s"]))   # the run least disturbed by other jobs
    ingest["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in runs)
    if len(runs) > 1:
        ingest["runs"] = [{k: r[k] for k in ("wall_s", "cpu_user_s", "cpu_sys_s", "peak_rss_bytes", "load_before")}
                          for r in runs]
    result["ingest"] = ingest

    if baseline_dir is not None and case["rows"] <= a.baseline_max_rows:
        out = data_dir / f"out-{case['name']}-baseline"
        shutil.rmtree(out, ignore_errors=True)
        log_path = logs / f"{case['name']}.baseline.log"
        base = run_measured([sys.executable, "-c", BASELINE_CODE, str(baseline_dir), str(path), str(out), str(anime),
                             str(case["min_user_ratings"])], log_path)
        if base["returncode"] == 0:
            base["rows_per_s"] = round(case["rows"] / base["wall_s"])
            base["same_content_hash"] = (json.loads((out / "manifest.json").read_text())["content_hash"]
                                         == ingest["content_hash"])
        result["baseline"] = base | {"ref": a.baseline_ref}
        shutil.rmtree(out, ignore_errors=True)

    result["meets_rate"] = ingest["rows_per_s"] >= TARGET_ROWS_PER_S
    result["meets_rss"] = ingest["peak_rss_bytes"] <= TARGET_RSS_BYTES
    if generated is not None and size > a.keep_max_gb * 1e9:
        path.unlink()
        Path(f"{path}.json").unlink(missing_ok=True)
        result["data_deleted"] = True
    return result


def _env_without_redis() -> dict:
    """The benchmark measures the ingest itself: no suppression lookup from a stray $REDIS_URL."""
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    return env


# ---------------------------------------------------------------- report

def machine() -> dict:
    mem = next((int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal")), None)
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    import numpy
    import pyarrow
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "training/ingest.py", "training/readers.py"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "mem_bytes": mem, "cpu": model, "python": platform.python_version(),
            "numpy": numpy.__version__, "pyarrow": pyarrow.__version__,
            "commit": commit.strip() + (" + uncommitted ingest changes" if dirty else "")}


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def print_row(r: dict):
    i, f = r["ingest"], r["floor_pyarrow_read"]
    ok = ("ok" if r["meets_rate"] else "SLOW") + "/" + ("ok" if r["meets_rss"] else "OVER")
    line = (f"{r['name']:<34} {r['rows'] / 1e6:7.1f}M {r['file_bytes'] / 1e9:5.2f}GB | floor {f['wall_s']:6.1f}s "
            f"{f['rows_per_s'] / 1e6:5.2f}M/s {_gib(f['peak_rss_bytes']):>9} | ingest {i['wall_s']:6.1f}s "
            f"{i['rows_per_s'] / 1e6:5.2f}M/s cpu {i['cpu_user_s'] + i['cpu_sys_s']:6.1f}s "
            f"{_gib(i['peak_rss_bytes']):>9} | {ok} | load {i['load_before'][0]:.1f}"
            + (f" | {len(i['runs'])} runs: " + ", ".join(f"{x['wall_s']:.1f}s" for x in i["runs"]) if "runs" in i else ""))
    if "baseline" in r and r["baseline"].get("returncode") == 0:
        b = r["baseline"]
        line += (f"\n{'':<34} baseline {b['ref']}: {b['wall_s']:.1f}s {b['rows_per_s'] / 1e6:.2f}M/s "
                 f"cpu {b['cpu_user_s'] + b['cpu_sys_s']:.1f}s {_gib(b['peak_rss_bytes'])} "
                 f"same hash: {b['same_content_hash']}")
    print(line, flush=True)


def plot(results: list[dict], path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["name"] for r in results]
    x = list(range(len(names)))
    series = [("floor: pyarrow read", lambda r: r["floor_pyarrow_read"]),
              ("fuserank ingest", lambda r: r["ingest"]),
              ("ingest before (baseline)", lambda r: r.get("baseline") if r.get("baseline", {}).get("returncode") == 0
               else None)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for j, (label, pick) in enumerate(series):
        at = [i + (j - 1) * 0.27 for i in x]
        rate = [(pick(r) or {}).get("rows_per_s", 0) / 1e6 for r in results]
        rss = [(pick(r) or {}).get("peak_rss_bytes", 0) / 2**30 for r in results]
        ax1.bar(at, rate, 0.27, label=label)
        ax2.bar(at, rss, 0.27, label=label)
    for i, r in zip(x, results):
        ax1.annotate(f"load {r['ingest']['load_before'][0]:.1f}", (i, r["ingest"]["rows_per_s"] / 1e6),
                     ha="center", va="bottom", fontsize=7)
    ax1.axhline(TARGET_ROWS_PER_S / 1e6, color="k", ls="--", lw=1, label="target 2M rows/s")
    ax1.set_ylabel("M rows/s (wall, end to end)")
    ax2.axhline(TARGET_RSS_BYTES / 2**30, color="k", ls="--", lw=1, label="target 4 GiB")
    ax2.set_ylabel("peak RSS (GiB)")
    for ax in (ax1, ax2):
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"fuserank ingest on synthetic MyAnimeList files ({os.cpu_count()} CPUs, shared; "
                 "load = 1-min load average at the start)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--small", action="store_true", help="quick check: 1M, 2M (+shuffled) and 3M animelist rows")
    p.add_argument("--rows", type=int, action="append", help="rating_complete sizes for the scaling cases "
                   "(repeatable; default 10M, or 1M with --small)")
    p.add_argument("--big-rows", type=int,
                   help="size of the full-scale grouped and shuffled cases (default 57M; 0 skips)")
    p.add_argument("--animelist-rows", type=int, help="animelist case size (default 109M; 0 skips)")
    p.add_argument("--min-user-ratings", type=int, default=1,
                   help="1 keeps every rating: the most output work, an upper bound for any threshold")
    p.add_argument("--no-default-threshold-case", dest="default_threshold_case", action="store_false",
                   help="skip the extra full-scale case at the CLI default --min-user-ratings 400")
    p.add_argument("--baseline-ref", help="also run the ingest of this git commit on every case")
    p.add_argument("--baseline-max-rows", type=int, default=60_000_000,
                   help="skip the baseline above this size (the old ingest needed ~80 bytes/row)")
    p.add_argument("--only", action="append", metavar="CASE",
                   help="run just this case (repeatable); its results replace that case's in an existing --out")
    p.add_argument("--data-dir", default="/tmp/fuserank-bench")
    p.add_argument("--keep-max-gb", type=float, default=1.0, help="delete generated files larger than this after use")
    p.add_argument("--repeat", type=int, default=1,
                   help="ingest runs per case: the fastest is reported (all are kept), the largest peak RSS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results" / "ingest.json"))
    p.add_argument("--plot", action="store_true", help="also write a PNG beside --out")
    a = p.parse_args(argv)
    data_dir = Path(a.data_dir)
    if data_dir.resolve().is_relative_to(ROOT):
        raise SystemExit(f"--data-dir {data_dir} is inside the repository; use a directory outside it")
    data_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"machine: {info['nproc']} cpus, {info['mem_bytes'] / 2**30:.1f} GiB, {info['cpu']}; "
          f"pyarrow {info['pyarrow']}, numpy {info['numpy']}; commit {info['commit']}", flush=True)
    print(f"targets: >= {TARGET_ROWS_PER_S / 1e6:.0f}M rows/s end to end, peak RSS <= {_gib(TARGET_RSS_BYTES)}",
          flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline_dir = baseline_package(a.baseline_ref, Path(tmp)) if a.baseline_ref else None
        for case in cases(a):
            print(f"{case['name']}: {case['rows']:,} rows, {case['users']:,} users, min_user_ratings "
                  f"{case['min_user_ratings']}", flush=True)
            results.append(run_case(case, a, baseline_dir))
            print_row(results[-1])
    out = Path(a.out)
    if a.only and out.exists():   # keep the earlier cases, in their order, with these replaced
        fresh = {r["name"]: r for r in results}
        earlier = json.loads(out.read_text())["cases"]
        results = [fresh.pop(r["name"], r) for r in earlier] + list(fresh.values())
    report = {"benchmark": "ingest", "argv": sys.argv[1:] if argv is None else argv, "machine": info,
              "targets": {"rows_per_s": TARGET_ROWS_PER_S, "peak_rss_bytes": TARGET_RSS_BYTES},
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cases": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    if a.plot:
        plot(results, out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.png')}")
    return report


if __name__ == "__main__":
    main()

"""The feedback write path: acknowledged ratings per second against `fuserank serve`, beside bare Redis XADD.

    flock /tmp/fuserank-bench.lock nice -n 5 .venv/bin/python -u benchmarks/bench_feedback.py
    ... --users 10000 --anime 5000 --duration 10 --repeats 3                   # the defaults

Steps (printed and written to ``benchmarks/results/feedback.json``):

1. a synthetic model (``bench_precompute.cached_model``, cached under ``--workdir``);
2. a real redis-server as the feedback store needs it (``fuserank.redis_server.LocalRedis``: ``appendonly
   yes``, ``appendfsync always``: every acknowledged write is on disk before its answer);
3. ``fuserank serve`` with its default worker settings (gthread, 2 workers x 4 threads) and the rate limit
   off, then ``wrk`` at 16 connections (2 threads) for ``--duration`` s after a 2 s warm-up:
   ``PUT /v1/users/<id>/ratings/<anime>`` with ``{"rating": 1..10}``, the user, anime and rating varied per
   request over the model's ids (a Lua script), so every write also queues a fresh-list rebuild; the median
   of ``--repeats`` runs. The stream's length after the run is checked against the 200s wrk counted;
4. on the same server in the same run: ``redis-benchmark -c 16 -n 50000 XADD <key> '*' f v`` (the
   append alone, the write path's floor).

Targets (issue #19): >= 2,000 acknowledged ratings/s with p99 <= 20 ms at 16 connections.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SERVING = _load("bench_serving")
# The PUT requests; each wrk thread's start (setup, init) and the summary (``done``: one WRK_JSON line) are the
# serving benchmark's.
_SHARED = SERVING.WRK_SCRIPT
WRK_SCRIPT = r"""
local users = {%s}
local anime = {%s}
""" + _SHARED[_SHARED.index("local counter"):_SHARED.index("function request")] + r"""function request()
  i = i + 1
  local path = "/v1/users/" .. users[(i %% #users) + 1] .. "/ratings/" .. anime[((i * 31) %% #anime) + 1]
  return wrk.format("PUT", path, {["Content-Type"] = "application/json"},
                    '{"rating":' .. ((i %% 10) + 1) .. '}')
end
""" + _SHARED[_SHARED.index("function done"):]


def load_average() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def start_api(model_dir: str, redis_url: str, port: int, log: Path, worker_class: str | None = None) -> subprocess.Popen:
    """``fuserank serve`` once it answers, its output in ``log``; refused unless the feedback store is durable."""
    extra = ["--worker-class", worker_class] if worker_class else []
    proc = subprocess.Popen([sys.executable, "-m", "fuserank", "serve", "--model", model_dir, "--redis-url", redis_url,
                             "--port", str(port), "--rate-limit", "0", *extra],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                ready = json.loads(resp.read())
            break
        except urllib.error.HTTPError as exc:       # 503: no list version published (writes need none)
            ready = json.loads(exc.read())
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"fuserank serve did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.3)
    if ready.get("feedback_durable") is not True:
        raise RuntimeError(f"the feedback store is not durable: {ready}")
    return proc


def stop_api(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wrk(port: int, script: Path, duration: float, connections: int = 16) -> dict:
    run = SERVING.run_wrk(port, script, connections, duration)
    seconds = run["requests"] / run["rps"]
    return {"acked_per_s": round((run["requests"] - run["errors"]) / seconds, 1),
            **{k: run[k] for k in ("requests", "errors", "error_kinds", "p50_ms", "p90_ms", "p99_ms", "max_ms",
                                   "mean_ms")}}


def redis_benchmark_xadd(port: int, clients: int = 16, n: int = 50_000) -> dict:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-c", str(clients), "-n", str(n), "--csv",
                          "XADD", "fuserank:bench:xadd", "*", "f", "v"],
                         capture_output=True, text=True, timeout=600).stdout.strip().splitlines()
    header = [h.strip('"') for h in out[0].split(",")]
    row = dict(zip(header, [v.strip('"') for v in out[-1].split(",")]))
    return {"clients": clients, "n": n, "rps": float(row["rps"]), "p50_ms": float(row["p50_latency_ms"]),
            "p99_ms": float(row["p99_latency_ms"]), "max_ms": float(row["max_latency_ms"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--anime", type=int, default=5_000)
    p.add_argument("--ratings-per-user", type=float, default=57_000_000 / 310_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "fuserank-bench-feedback"))
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker-class", choices=["gthread", "gevent"], default=None,
                   help="fuserank serve --worker-class (default: serve's own default)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/feedback.json"))
    a = p.parse_args()

    from fuserank import keys
    from fuserank.artifacts import ModelArtifact
    from fuserank.redis_client import connect
    from fuserank.redis_server import LocalRedis, free_port

    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    bench = SERVING.load_bench_precompute()
    model_dir, synthetic = bench.cached_model(workdir, a.users, a.anime, int(a.users * a.ratings_per_user), a.dim,
                                              a.seed)
    model = ModelArtifact.load(str(model_dir))
    script = workdir / "put-ratings.lua"
    script.write_text(WRK_SCRIPT % (",".join(str(int(u)) for u in model.user_ids[:5000]),
                                    ",".join(str(int(x)) for x in model.anime_ids[:2000])))
    result = {"machine": f"{platform.node()} ({os.cpu_count()} CPUs)", "command": " ".join(sys.argv),
              "load_at_start": load_average(), "model": {"users": model.n_users, "anime": model.n_anime,
                                                         "dim": a.dim, **synthetic},
              "server": f"fuserank serve defaults, --worker-class {a.worker_class or '(default)'}, --rate-limit 0",
              "redis": "appendonly yes, appendfsync always", "connections": 16, "duration_s_per_run": a.duration}
    with LocalRedis(dir=str(workdir / "redis")) as server:
        client = connect(server.url)
        client.flushall()
        port = free_port()
        api = start_api(str(model_dir), server.url, port, workdir / "serve.log", a.worker_class)
        try:
            wrk(port, script, 2)                                    # warm-up
            runs = []
            for _ in range(a.repeats):
                before = client.xlen(keys.FEEDBACK_EVENTS)
                run = wrk(port, script, a.duration)
                time.sleep(0.5)
                run["stream_entries_added"] = client.xlen(keys.FEEDBACK_EVENTS) - before
                runs.append(run)
                print(f"PUT ratings: {run['acked_per_s']:.0f}/s acknowledged, p50 {run['p50_ms']:.2f} ms, "
                      f"p99 {run['p99_ms']:.2f} ms, errors {run['errors']}, stream +{run['stream_entries_added']}",
                      flush=True)
        finally:
            stop_api(api)
        result["api_put_ratings"] = {
            **{k: round(statistics.median(r[k] for r in runs), 3) for k in ("acked_per_s", "p50_ms", "p90_ms",
                                                                           "p99_ms", "max_ms", "mean_ms")},
            "errors": sum(r["errors"] for r in runs), "runs": runs}
        result["redis_benchmark_xadd"] = redis_benchmark_xadd(server.port)
        print(f"redis-benchmark XADD at 16 clients: {result['redis_benchmark_xadd']['rps']:.0f}/s, "
              f"p99 {result['redis_benchmark_xadd']['p99_ms']:.2f} ms", flush=True)
        client.close()
    put = result["api_put_ratings"]
    result["targets"] = {"acked_per_s >= 2000": put["acked_per_s"] >= 2000, "p99_ms <= 20": put["p99_ms"] <= 20}
    result["api_share_of_xadd"] = round(put["acked_per_s"] / result["redis_benchmark_xadd"]["rps"], 3)
    result["load_at_end"] = load_average()
    print(json.dumps({k: v for k, v in result.items() if k != "api_put_ratings"} | {
        "api_put_ratings": {k: v for k, v in put.items() if k != "runs"}}, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(result, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()

"""Serving: `GET /v1/users/<id>/recommendations?n=10` under gunicorn against its floor, measured in one run.

    python -u benchmarks/bench_serving.py                                   # 50k users x 17.5k anime, 128-d
    python -u benchmarks/bench_serving.py --users 20000 --duration 5        # quicker
    python -u benchmarks/bench_serving.py --classes gevent --repeats 1      # one worker model
    python -u benchmarks/bench_serving.py --users 20000 --cluster           # one node vs a Redis Cluster

``--cluster`` measures only the API (the default worker model, ``--workers``) against the one redis-server
and against a loopback Redis Cluster of 3 primaries with a replica each (tests/cluster.py) holding the
same precompute, alternately with ``wrk`` at 16 connections; requests/s and p99 of each and their ratios.

Steps (figures printed and written to ``benchmarks/results/serving.json``):

1. a synthetic model artifact (``bench_precompute.cached_model``: clustered 128-d embeddings, power-law
   activity and popularity, ~184 ratings per user as in MyAnimeList 2020), cached under ``--workdir``;
2. a real ``redis-server`` on a free port (noeviction, no persistence) filled by the real
   ``fuserank.batch.pipeline.precompute`` (Beam, in-process runner) and published; the dataset is saved
   next to the model and reloaded by the next run of the same model, settings and list-writing code;
3. for each worker model (``sync``, ``gthread`` with 4 threads, ``gevent``; 2 workers each, the machine's
   core count): the FuseRank API (``fuserank.api.server.serve``, metrics and all) and the **floor** — a
   minimal Flask app under the same gunicorn options but with ``--floor-class`` workers (``sync``: the
   same yardstick for every worker model; ``same``: the API's) doing one Redis GET of the same stored
   value and answering as many bytes as the API does — both on 127.0.0.1, measured alternately with ``wrk``
   (``--duration`` seconds per run, after a 2 s warm-up) at 16 connections (2 wrk threads), at
   1 connection, and at 16 connections paced (each waits ``PACED_THINK_MS`` after an answer: a load below
   saturation), over 2,000 precomputed users in turn; the median of ``--repeats`` runs is reported;
4. the live path (``?source=live``) at n = 10 and n = 100, 1 connection, on the default worker model;
5. bare Redis: ``redis-benchmark`` GET of a stored list at 1 and 16 clients;
6. in-process CPU per request (the WSGI app called directly, no HTTP): the API as served (the hot route,
   fuserank.api.hotpath), the same through Flask's dispatch, without metrics, and the floor app; plus a
   cProfile of the API's request path (top functions).

Targets (issue #4): at 16 connections >= 90% of the floor's requests/s and p99 <= 1.2x the floor's;
at 1 connection p95 <= 1.2x the floor's; live p95 <= 20 ms at 1 connection; paced 16 connections
p99 <= 1.2x the floor's and 16 connections >= 1.0x the floor's requests/s (issue #21).
"""
from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import json
import os
import platform
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACED_THINK_MS = 10
sys.path.insert(0, str(ROOT))

WRK_SCRIPT = r"""
local paths = {%s}
local counter = 0
function setup(thread)
  thread:set("offset", counter * 997)
  counter = counter + 1
end
function init(args)
  i = offset or 0
end
function request()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRK_JSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"errors":{"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d},"mean_us":%%.1f,"p50_us":%%d,"p90_us":%%d,"p95_us":%%d,"p99_us":%%d,"max_us":%%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency.max))
end
"""


def load_bench_precompute():
    spec = importlib.util.spec_from_file_location("bench_precompute", ROOT / "benchmarks/bench_precompute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_average() -> str:
    return open("/proc/loadavg").read().split(" ")[:3].__str__()


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# ------------------------------------------------------------------------------------------------ Redis
class RedisServer:
    """redis-server on a free port; ``rdb`` is loaded at start when it exists (and saved by ``save()``)."""

    def __init__(self, rdb: Path):
        from fuserank.redis_server import find_redis_server
        self.port = free_port()
        self.rdb = rdb
        rdb.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(rdb.parent), "--dbfilename", rdb.name, "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        self.client = redis.Redis(port=self.port)
        deadline = time.time() + 300    # loading a large RDB takes a while
        while True:
            try:
                if self.client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def save(self) -> None:
        self.client.save()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


# ------------------------------------------------------------------------------------------- the servers
def floor_app(redis_url: str, version: str, body_bytes: int):
    """The floor: Flask, one Redis GET of the same stored list, the same number of bytes answered."""
    import redis
    from flask import Flask
    from fuserank import keys
    app = Flask("floor")
    client = redis.Redis.from_url(redis_url, socket_timeout=0.25, socket_connect_timeout=0.25)
    prefix = keys.user(version, 0)[:-1]

    @app.get("/v1/users/<int:user_id>/recommendations")
    def recommendations(user_id):
        value = client.get(prefix + str(user_id))
        return app.response_class(value[:body_bytes], mimetype="application/json")

    return app


def run_server(argv: list[str]) -> None:
    """``serve-app`` / ``serve-floor``: the two servers, each in its own process (started by the benchmark)."""
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["serve-app", "serve-floor"])
    p.add_argument("--model")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--redis-cluster", action="store_true")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker-class", required=True)
    p.add_argument("--version")
    p.add_argument("--body-bytes", type=int)
    a = p.parse_args(argv)
    if a.kind == "serve-app":
        from fuserank.api.server import serve
        from fuserank.config import ServeSettings
        serve(ServeSettings(model=a.model, redis_url=a.redis_url, redis_cluster=a.redis_cluster, port=a.port,
                            workers=a.workers, threads=a.threads, worker_class=a.worker_class))
        return
    from fuserank.api.server import GunicornApp, gunicorn_options
    app = floor_app(a.redis_url, a.version, a.body_bytes)
    GunicornApp(app, gunicorn_options("127.0.0.1", a.port, a.workers, a.threads, a.worker_class)).run()


class Server:
    def __init__(self, args: list[str], port: int, env=None):
        self.port = port
        self.proc = subprocess.Popen([sys.executable, __file__, *args, "--port", str(port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/users/0/recommendations", timeout=2):
                    break
            except urllib.error.HTTPError:
                break       # answering (a 404 / 500 for user 0 is fine)
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"server {args[0]} did not start:\n{self.proc.stdout.read().decode()[-3000:]}")
                time.sleep(0.3)

    def worker_pids(self) -> list[int]:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as fh:
            return [int(p) for p in fh.read().split()]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stdout.read().decode()[-2000:]


# ---------------------------------------------------------------------------------------------------- wrk
def wrk(port: int, paths: list[str], connections: int, duration: float, script_dir: Path, think_ms: int = 0) -> dict:
    """``think_ms``: each connection waits that long after an answer before its next request (paced load)."""
    script = script_dir / f"paths-{abs(hash(tuple(paths))) % 10**8}-think{think_ms}.lua"
    if not script.exists():
        pace = f"function delay()\n  return {think_ms}\nend\n" if think_ms else ""
        script.write_text(WRK_SCRIPT % ",".join(json.dumps(p) for p in paths) + pace)
    return run_wrk(port, script, connections, duration)


def run_wrk(port: int, script: Path, connections: int, duration: float) -> dict:
    """wrk with ``script`` (which prints one WRK_JSON summary line) at ``connections``, at most 2 threads."""
    threads = min(connections, 2)
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, int(round(duration)))}s", "--timeout", "5s",
           "-s", str(script), f"http://127.0.0.1:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    r = json.loads(line[len("WRK_JSON "):])
    seconds = r["duration_us"] / 1e6
    return {"rps": round(r["requests"] / seconds, 1), "requests": r["requests"],
            "errors": sum(r["errors"].values()), "error_kinds": r["errors"],
            "p50_ms": r["p50_us"] / 1e3, "p90_ms": r["p90_us"] / 1e3, "p95_ms": r["p95_us"] / 1e3,
            "p99_ms": r["p99_us"] / 1e3, "max_ms": r["max_us"] / 1e3, "mean_ms": round(r["mean_us"] / 1e3, 3),
            "bytes_per_response": round(r["bytes"] / max(r["requests"], 1))}


def median_run(runs: list[dict]) -> dict:
    keys_ = ("rps", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms")
    out = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys_}
    out["errors"] = sum(r["errors"] for r in runs)
    out["runs"] = runs
    return out


# ---------------------------------------------------------------------------------- redis-benchmark
def redis_benchmark(port: int, key: str, clients: int, n: int = 50_000) -> dict:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-c", str(clients), "-n", str(n), "--csv", "GET", key],
                         capture_output=True, text=True, timeout=300).stdout.strip().splitlines()
    header = [h.strip('"') for h in out[0].split(",")]
    values = [v.strip('"') for v in out[-1].split(",")]
    row = dict(zip(header, values))
    return {"clients": clients, "rps": float(row["rps"]), "p50_ms": float(row["p50_latency_ms"]),
            "p95_ms": float(row["p95_latency_ms"]), "p99_ms": float(row["p99_latency_ms"]),
            "max_ms": float(row["max_latency_ms"])}


# ---------------------------------------------------------------------------------- in-process CPU
def in_process(model_dir: str, redis_url: str, version: str, body_bytes: int, paths: list[str],
               n: int) -> dict:
    """µs per request through the WSGI app (no HTTP, no gunicorn): wall and process CPU, and a profile."""
    from werkzeug.test import EnvironBuilder
    from fuserank.config import ServeSettings, export, unset
    # the hooks write mmap files as under gunicorn: prometheus_client picks its mode when first imported
    assert "prometheus_client" not in sys.modules, "prometheus_client imported before its multiprocess directory"
    mp_dir = tempfile.mkdtemp(prefix="bench-metrics-")
    export("PROMETHEUS_MULTIPROC_DIR", mp_dir)
    try:
        from fuserank.api.app import create_app
        settings = ServeSettings(model=model_dir, redis_url=redis_url)
        api = create_app(settings)
        service = api.extensions["fuserank"]
        apps = {"api": api,                 # as served: the hot route before Flask, metrics on
                "api_flask_dispatch": create_app(settings, service=service, hot_route=False),
                "api_without_metrics": create_app(settings, service=service, instrument=False),
                "floor": floor_app(redis_url, version, body_bytes)}
        environs = [EnvironBuilder(path=p.split("?")[0], query_string=p.split("?")[1] if "?" in p else "")
                    .get_environ() for p in paths[:500]]

        def one(app, i):
            status = []
            body = b"".join(app(dict(environs[i % len(environs)]), lambda s, h, e=None: status.append(s)))
            return status[0], body

        for name, app in apps.items():
            assert one(app, 0)[0].startswith("200"), name
            for i in range(500):
                one(app, i)
        assert one(api, 0) == one(apps["api_flask_dispatch"], 0), "the hot route answers what Flask answers"
        best: dict[str, tuple[float, float]] = {}
        rounds = 8
        runs = list(apps.items())
        for r in range(rounds):     # in turn, best round each: the machine is shared
            for name, app in (runs if r % 2 == 0 else runs[::-1]):
                t0, c0 = time.perf_counter(), time.process_time()
                for i in range(n // rounds):
                    one(app, i)
                wall = (time.perf_counter() - t0) / (n // rounds) * 1e6
                cpu = (time.process_time() - c0) / (n // rounds) * 1e6
                if name not in best or cpu < best[name][1]:
                    best[name] = (wall, cpu)
        out = {name: {"wall_us": round(w, 1), "cpu_us": round(c, 1)} for name, (w, c) in best.items()}
        # the Flask path's hook alone, timed directly (the A/B above is a difference of two noisy figures)
        import timeit
        from flask import g
        flask_app = apps["api_flask_dispatch"]
        after = flask_app.after_request_funcs[None][-1]
        with flask_app.test_request_context(paths[0], environ_base={"fuserank.t0": time.perf_counter()}):
            from flask import request
            request.url_rule = flask_app.url_map._rules_by_endpoint["recommendations.user_recommendations"][0]
            g.answer_source, g.degraded = "precomputed", False
            response = flask_app.response_class(b"{}")
            calls = 20_000
            out["metrics_after_request_hook_us"] = round(
                min(timeit.repeat(lambda: after(response), number=calls, repeat=5)) / calls * 1e6, 2)

        out["api_cpu_beyond_floor_us"] = round(out["api"]["cpu_us"] - out["floor"]["cpu_us"], 1)
        out["metrics_hooks_cpu_us"] = round(out["api"]["cpu_us"] - out["api_without_metrics"]["cpu_us"], 1)
        out["flask_dispatch_cpu_us"] = round(out["api_flask_dispatch"]["cpu_us"] - out["api"]["cpu_us"], 1)
        prof = cProfile.Profile(time.process_time)     # CPU time: not the waits a busy machine adds
        prof.enable()
        for i in range(n):
            one(apps["api"], i)
        prof.disable()
        for order, count in (("tottime", 20), ("cumulative", 30)):
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats(order).print_stats(count)
            out[f"profile_top_{order}"] = [line for line in text.getvalue().splitlines() if line.strip()][-(count + 1):]
        return out
    finally:
        unset("PROMETHEUS_MULTIPROC_DIR")
        shutil.rmtree(mp_dir, ignore_errors=True)


def hot_path_pieces(model_dir: str, version: str, stored: bytes, n_calls: int = 20_000) -> dict:
    """µs of four steps of the request path, each as the code does it now (key ``code``) beside an earlier way
    of doing it (``before``) or an inline equivalent, from the same run."""
    import timeit
    import numpy as np
    from flask import Flask, request
    from fuserank import keys
    from fuserank.artifacts import ModelArtifact
    model = ModelArtifact.load(model_dir)
    ids, uid = model.user_ids, int(model.user_ids[len(model.user_ids) // 3])

    def scalar_index(raw):
        i = int(np.searchsorted(ids, raw))
        return i if i < len(ids) and ids[i] == raw else -1

    def slice_n(value, n):
        head, _, body = value.partition(b"\n")
        ends = head.split(b",", n)
        return body if n >= len(ends) else body[:int(ends[n - 1])] + b"]"

    assert scalar_index(uid) == int(model.user_index(uid)[0]) and slice_n(stored, 10) == keys.slice_list(stored, 10)
    head = {"user_id": uid, "model_version": model.version, "source": "precomputed",
            "list_version": version}
    app = Flask("pieces")
    names = ("n", "source", "include_adult", "exclude", "genre", "type", "explain")

    def best(fn) -> float:
        return round(min(timeit.repeat(fn, number=n_calls, repeat=5)) / n_calls * 1e6, 2)

    from fuserank.api.routes import _arg
    from fuserank.api.answers import Answer
    answer = Answer(b"[]", "precomputed", model.version, head["list_version"])
    with app.test_request_context(f"/v1/users/{uid}/recommendations?n=10"):
        out = {
            "user_index_one_id": {"code": best(lambda: model.user_index(uid)),
                                  "inline_searchsorted": best(lambda: scalar_index(uid))},
            "slice_list_n10": {"code": best(lambda: keys.slice_list(stored, 10)),
                               "inline_split": best(lambda: slice_n(stored, 10))},
            "answer_json_empty_items": {"code": best(lambda: answer.to_json("user_id", uid)),
                                        "before_json_dumps_head": best(lambda: json.dumps(head).encode())},
            "seven_query_params_absent_but_n": {
                "code": best(lambda: [_arg(a, k) for a in (request.args,) for k in names]),
                "before_request_args_get": best(lambda: [request.args.get(k) for k in names])},
        }
    return out


# ------------------------------------------------------------------------------------------------- main
def cluster_comparison(a, model_dir, settings, single_url: str, paths: list[str], script_dir: Path) -> dict:
    """The API against one node and against a 3-primary cluster holding the same precompute, 16 connections."""
    from fuserank.api.server import DEFAULT_WORKER_CLASS
    from fuserank.batch.pipeline import precompute
    from fuserank.redis_client import Target
    from tests.cluster import LocalCluster
    threads = a.threads if DEFAULT_WORKER_CLASS == "gthread" else 1
    common = ["--model", str(model_dir), "--workers", str(a.workers), "--threads", str(threads),
              "--worker-class", DEFAULT_WORKER_CLASS]
    with LocalCluster() as cluster:
        t0 = time.perf_counter()
        precompute(str(model_dir), Target(cluster.url, cluster=True), settings)
        precompute_s = round(time.perf_counter() - t0, 1)
        print(f"== precompute into the cluster: {precompute_s}s", flush=True)
        servers = {"single_node": Server(["serve-app", "--redis-url", single_url, *common], free_port()),
                   "cluster": Server(["serve-app", "--redis-url", cluster.url, "--redis-cluster", *common],
                                     free_port())}
        try:
            for s in servers.values():
                wrk(s.port, paths, 16, 2, script_dir)      # warm-up
            runs = {name: [] for name in servers}
            for rep in range(a.repeats):
                for name in (list(servers) if rep % 2 == 0 else list(servers)[::-1]):
                    runs[name].append(wrk(servers[name].port, paths, 16, a.duration, script_dir))
        finally:
            for s in servers.values():
                s.stop()
    out = {name: median_run(r) for name, r in runs.items()}
    one, many = out["single_node"], out["cluster"]
    for name, r in out.items():
        print(f"   {name:12s} c16 {r['rps']:7.0f} req/s p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms "
              f"errors {r['errors']}  [{load_average()}]", flush=True)
    return {"worker_class": DEFAULT_WORKER_CLASS, "workers": a.workers, "threads": threads,
            "cluster_precompute_s": precompute_s, **out,
            "ratios_cluster_to_single": {"c16_rps": round(many["rps"] / one["rps"], 3),
                                         "c16_p99": round(many["p99_ms"] / one["p99_ms"], 3)}}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("serve-app", "serve-floor"):
        run_server(sys.argv[1:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--anime", type=int, default=17_500)
    p.add_argument("--ratings-per-user", type=float, default=57_000_000 / 310_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "fuserank-bench"))
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--repeats", type=int, default=2, help="wrk runs per measurement (median reported)")
    p.add_argument("--classes", default="sync,gthread,gevent",
                   help="worker models to compare, comma-separated; CLASS:N for N workers (default --workers)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    p.add_argument("--floor-class", default="sync", help="the floor's worker class; 'same': the API's")
    p.add_argument("--in-process-requests", type=int, default=5000)
    p.add_argument("--live-on", default=None, help="worker model (as in --classes) to measure the live path on; "
                   "default: the server's default worker class")
    p.add_argument("--cluster", action="store_true", help="only: the API against one node vs a 3-primary "
                   "Redis Cluster at 16 connections")
    p.add_argument("--out", default=None, help="default: benchmarks/results/serving.json (serving-cluster.json "
                   "with --cluster)")
    a = p.parse_args()
    a.out = a.out or str(ROOT / "benchmarks/results" / ("serving-cluster.json" if a.cluster else "serving.json"))
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    from fuserank import keys
    from fuserank.api.server import DEFAULT_WORKER_CLASS
    a.live_on = a.live_on or DEFAULT_WORKER_CLASS

    load_start = uptime()
    print(f"== {load_start}", flush=True)
    workdir = Path(a.workdir)
    bp = load_bench_precompute()
    ratings = int(a.users * a.ratings_per_user)
    model_dir, model_summary = bp.cached_model(workdir, a.users, a.anime, ratings, a.dim, a.seed)
    print(f"== model {model_dir} ({'cached' if model_summary.get('cached') else 'generated'}): "
          f"{model_summary['users']} users, {model_summary['anime']} anime, {model_summary['ratings']} ratings", flush=True)

    from fuserank.config import HybridSettings
    settings = HybridSettings()
    import hashlib
    code = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in (
        "batch/pipeline.py", "batch/redis_io.py", "fuserank/scorer.py", "fuserank/keys.py"))).hexdigest()[:8]
    rdb = model_dir / f"serving-{settings.digest()}-{code}.rdb"   # lists as the current precompute writes them
    server = RedisServer(rdb)
    servers: list[Server] = []
    try:
        version = server.client.get(keys.CURRENT)
        precompute_s = None
        if version is None:
            from fuserank.batch.pipeline import precompute
            t0 = time.perf_counter()
            result = precompute(str(model_dir), server.url, settings)
            precompute_s = round(time.perf_counter() - t0, 1)
            version = result["version"]
            server.save()
            print(f"== precompute: {precompute_s}s, list version {version}", flush=True)
        else:
            version = version.decode()
            print(f"== list version {version} reloaded from {rdb}", flush=True)

        import numpy as np
        from fuserank.artifacts import ModelArtifact
        model = ModelArtifact.load(str(model_dir))
        rng = np.random.default_rng(1)
        sample = [int(u) for u in rng.choice(model.user_ids, 2000, replace=False)]
        pipe = server.client.pipeline(transaction=False)
        for u in sample:
            pipe.exists(keys.user(version, u))
        sample = [u for u, present in zip(sample, pipe.execute()) if present]
        paths = [f"/v1/users/{u}/recommendations?n=10" for u in sample]
        stored = server.client.get(keys.user(version, sample[0]))
        value_bytes = statistics.mean(len(server.client.get(keys.user(version, u))) for u in sample[:200])
        del model

        script_dir = workdir / "wrk"
        script_dir.mkdir(parents=True, exist_ok=True)
        results = {"machine": {"cpus": os.cpu_count(), "cpu": _cpu_name(), "python": platform.python_version(),
                               "platform": platform.platform(), "redis": _redis_version()},
                   "command": " ".join(["python", "-u", "benchmarks/bench_serving.py"] + sys.argv[1:]),
                   "load_at_start": load_start, "model": {**model_summary, "path": str(model_dir)},
                   "list_version": version, "precompute_s": precompute_s,
                   "stored_value_bytes_mean": round(value_bytes), "users_sampled": len(sample),
                   "duration_s_per_run": a.duration, "repeats": a.repeats, "worker_models": {}}

        # API response size for n=10 -> the floor answers as many bytes
        api_port = free_port()
        probe = Server(["serve-app", "--model", str(model_dir), "--redis-url", server.url, "--workers", "1",
                        "--threads", "1", "--worker-class", "sync"], api_port)
        sizes = []
        for path in paths[:50]:
            with urllib.request.urlopen(f"http://127.0.0.1:{api_port}{path}", timeout=5) as r:
                body = r.read()
                assert json.loads(body)["source"] == "precomputed"
                sizes.append(len(body))
        probe.stop()
        body_bytes = round(statistics.mean(sizes))
        results["response_bytes_mean"] = body_bytes
        print(f"== {len(sample)} users; stored list {value_bytes:.0f} B, API answer (n=10) {body_bytes} B", flush=True)
        if a.cluster:
            results["cluster_comparison"] = cluster_comparison(a, model_dir, settings, server.url, paths, script_dir)
            results["load_at_end"] = uptime()
            with open(a.out, "w") as fh:
                json.dump(results, fh, indent=2)
            print(f"== wrote {a.out}", flush=True)
            return

        for spec in [c.strip() for c in a.classes.split(",") if c.strip()]:
            klass, _, n_workers = spec.partition(":")       # "sync:3" = 3 sync workers
            n_workers = int(n_workers or a.workers)
            if klass == "gevent" and importlib.util.find_spec("gevent") is None:
                results["worker_models"][spec] = {"skipped": "gevent not installed"}
                continue
            threads = a.threads if klass == "gthread" else 1
            common = ["--redis-url", server.url, "--workers", str(n_workers), "--threads", str(threads),
                      "--worker-class", klass]
            app = Server(["serve-app", "--model", str(model_dir), *common], free_port())
            floor_class = klass if a.floor_class == "same" else a.floor_class
            floor_common = ["--redis-url", server.url, "--workers", str(n_workers),
                            "--threads", str(a.threads if floor_class == "gthread" else 1), "--worker-class", floor_class]
            floor = Server(["serve-floor", "--version", version, "--body-bytes", str(body_bytes), *floor_common],
                           free_port())
            servers[:] = [app, floor]
            entry = {"worker_class": klass, "workers": n_workers, "threads": threads, "floor_worker_class": floor_class}
            for conns, think in ((16, 0), (1, 0), (16, PACED_THINK_MS)):
                label = f"c{conns}" + (f"_paced{think}ms" if think else "")
                for s in (app, floor):
                    wrk(s.port, paths, conns, 2, script_dir, think)   # warm-up
                runs = {"api": [], "floor": []}
                for rep in range(a.repeats):
                    order = [("api", app), ("floor", floor)] if rep % 2 == 0 else [("floor", floor), ("api", app)]
                    for name, s in order:
                        runs[name].append(wrk(s.port, paths, conns, a.duration, script_dir, think))
                api, fl = median_run(runs["api"]), median_run(runs["floor"])
                entry[label] = {"api": api, "floor": fl,
                                      "rps_ratio": round(api["rps"] / fl["rps"], 3),
                                      "p99_ratio": round(api["p99_ms"] / fl["p99_ms"], 3),
                                      "p95_ratio": round(api["p95_ms"] / fl["p95_ms"], 3)}
                print(f"   {spec:9s} {label:15s} api {api['rps']:7.0f} req/s p50 {api['p50_ms']:.2f} "
                      f"p95 {api['p95_ms']:.2f} p99 {api['p99_ms']:.2f} ms | floor {fl['rps']:7.0f} req/s "
                      f"p50 {fl['p50_ms']:.2f} p95 {fl['p95_ms']:.2f} p99 {fl['p99_ms']:.2f} ms | "
                      f"errors {api['errors']}/{fl['errors']}  [{load_average()}]", flush=True)
            c16, c1, paced = entry["c16"], entry["c1"], entry[f"c16_paced{PACED_THINK_MS}ms"]
            entry["targets"] = {"c16_rps_ge_90pct_floor": c16["rps_ratio"] >= 0.9,
                                "c16_rps_ge_1.0x_floor": c16["rps_ratio"] >= 1.0,
                                "c16_p99_le_1.2x_floor": c16["p99_ratio"] <= 1.2,
                                "c1_p95_le_1.2x_floor": c1["p95_ratio"] <= 1.2,
                                "c16_paced_p99_le_1.2x_floor": paced["p99_ratio"] <= 1.2}
            entry["load_after"] = uptime()
            if spec == a.live_on:
                entry["live"] = {}
                for n in (10, 100):
                    live_paths = [f"/v1/users/{u}/recommendations?n={n}&source=live" for u in sample[:500]]
                    wrk(app.port, live_paths, 1, 2, script_dir)
                    r = wrk(app.port, live_paths, 1, a.duration, script_dir)
                    entry["live"][f"n{n}"] = r
                    print(f"   {spec:9s} live n={n:3d} c=1  {r['rps']:6.0f} req/s p50 {r['p50_ms']:.2f} "
                          f"p95 {r['p95_ms']:.2f} p99 {r['p99_ms']:.2f} ms  (target p95 <= 20 ms)  "
                          f"[{load_average()}]", flush=True)
                entry["live"]["target_p95_le_20ms"] = all(entry["live"][f"n{n}"]["p95_ms"] <= 20 for n in (10, 100))
                with urllib.request.urlopen(f"http://127.0.0.1:{app.port}/metrics", timeout=5) as r:
                    scrape = r.read().decode()
                entry["metrics_scrape_lines"] = len(scrape.splitlines())
            for s in (app, floor):
                s.stop()
            servers.clear()
            results["worker_models"][spec] = entry

        key = keys.user(version, sample[0])
        results["redis_benchmark_get"] = [redis_benchmark(server.port, key, c) for c in (1, 16)]
        print(f"== redis-benchmark GET ({len(stored)} B): " + "; ".join(
            f"c={r['clients']} {r['rps']:.0f}/s p50 {r['p50_ms']} p95 {r['p95_ms']} p99 {r['p99_ms']} ms"
            for r in results["redis_benchmark_get"]), flush=True)

        results["in_process"] = in_process(str(model_dir), server.url, version, body_bytes, paths,
                                           a.in_process_requests)
        ip = results["in_process"]
        print(f"== in-process per request: api {ip['api']['cpu_us']} us CPU ({ip['api']['wall_us']} wall), without "
              f"metrics {ip['api_without_metrics']['cpu_us']} us, floor {ip['floor']['cpu_us']} us: "
              f"{ip['api_cpu_beyond_floor_us']} us beyond the floor, metrics {ip['metrics_hooks_cpu_us']} us; through "
              f"Flask's dispatch instead of the hot route {ip['api_flask_dispatch']['cpu_us']} us (+"
              f"{ip['flask_dispatch_cpu_us']} us; its after_request hook timed alone: "
              f"{ip['metrics_after_request_hook_us']} us)",
              flush=True)

        results["hot_path_pieces_us"] = hot_path_pieces(str(model_dir), version, stored)
        print("== hot-path pieces (us): " + "; ".join(
            f"{k} " + ", ".join(f"{name} {v}" for name, v in d.items()) for k, d in results["hot_path_pieces_us"].items()),
            flush=True)

        measured = {k: v for k, v in results["worker_models"].items() if "c16" in v}
        if measured:
            best = max(measured, key=lambda k: (measured[k]["c16"]["api"]["rps"]))
            results["best_worker_model_by_c16_rps"] = best
        results["default_worker_model"] = DEFAULT_WORKER_CLASS
        results["load_at_end"] = uptime()
        print(f"== {results['load_at_end']}", flush=True)
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as fh:
            json.dump(results, fh, indent=2)
        print(f"== wrote {a.out}", flush=True)
    finally:
        for s in servers:
            s.stop()
        server.stop()


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return out.split("v=")[1].split()[0] if "v=" in out else out.strip()


if __name__ == "__main__":
    main()

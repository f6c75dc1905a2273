"""Slow clients: 256 connections that never finish their headers, against `fuserank serve`, under `wrk -c16`.

    flock /tmp/fuserank-bench.lock nice -n 5 .venv/bin/python -u benchmarks/bench_slow_clients.py --classes default,gthread

For each worker class (``default``: what `fuserank serve` runs with no ``--worker-class``): a real
redis-server, a small synthetic model precomputed and published, the real server (2 workers). Then
``wrk -c16`` (2 threads, 5 s timeout) asks `GET /v1/users/<id>/recommendations?n=10` over 300 users for
``--quiet`` seconds, then again for ``--hold`` seconds while ``--half-open`` sockets hold partial headers
(`GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n`, never finished; one that the server closes is opened
again at once, so ``--half-open`` are held throughout); /healthz is probed every 0.5 s meanwhile (2 s
timeout). Target (issue #21): p99 under attack within 2x of the quiet p99, every probe answered. Figures
printed and written to ``--out`` with the machine's load average before and after.
"""
from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import selectors
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_bench_serving():
    spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "benchmarks/bench_serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def probes(port: int, stop: threading.Event, out: dict) -> None:
    answered = asked = 0
    worst = 0.0
    while not stop.is_set():
        t0 = time.perf_counter()
        asked += 1
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            answered += conn.getresponse().status == 200
            conn.close()
        except OSError:
            pass
        worst = max(worst, time.perf_counter() - t0)
        stop.wait(0.5)
    out.update(probes=asked, probes_answered=answered, worst_probe_s=round(worst, 3))


def hold_half_open(port: int, count: int, stop: threading.Event, out: dict) -> None:
    """Keep ``count`` connections open that sent part of their headers, opening a new one for each that the
    server closes (as an attacker would), until ``stop``; counts the ones the server closed."""
    def opened() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        return s

    sel = selectors.DefaultSelector()
    held = [opened() for _ in range(count)]
    closed_by_server, first_closed_after = 0, None
    t0 = time.monotonic()
    while not stop.wait(0.1):
        for key, _ in sel.select(0):
            sel.unregister(key.fileobj)
            key.fileobj.close()
            held.remove(key.fileobj)
            closed_by_server += 1
            first_closed_after = first_closed_after or round(time.monotonic() - t0, 1)
        held += [opened() for _ in range(count - len(held))]
    for s in held:
        s.close()
    out.update(half_open_closed_by_server=closed_by_server, first_closed_after_s=first_closed_after)


def measure(bs, klass: str, model: str, redis_url: str, paths: list[str], a, script_dir: Path) -> dict:
    from tests.factories import start_server, stop_server
    env = {k: v for k, v in os.environ.items() if k != "FUSERANK_WORKER_CLASS"}
    if klass != "default":
        env["FUSERANK_WORKER_CLASS"] = klass
    base, proc = start_server(model, redis_url, env=env)
    port = int(base.rsplit(":", 1)[1])
    try:
        bs.wrk(port, paths, 16, 2, script_dir)                               # warm-up
        quiet = bs.wrk(port, paths, 16, a.quiet, script_dir)
        probed: dict = {}
        held: dict = {}
        stop = threading.Event()
        jobs = [threading.Thread(target=probes, args=(port, stop, probed)),
                threading.Thread(target=hold_half_open, args=(port, a.half_open, stop, held))]
        for job in jobs:
            job.start()
        attacked = bs.wrk(port, paths, 16, a.hold, script_dir)
        stop.set()
        for job in jobs:
            job.join()
    finally:
        stop_server(proc)
    ratio = attacked["p99_ms"] / quiet["p99_ms"] if attacked["requests"] else None
    rps_ratio = attacked["rps"] / quiet["rps"]
    return {"worker_class": klass, "half_open": a.half_open, **held, "hold_s": a.hold, "quiet": quiet, "with_half_open": {**attacked, **probed},
            "p99_ratio": round(ratio, 3) if ratio else None, "rps_ratio": round(rps_ratio, 3),
            # a p99 over the few requests that got through says nothing: half the quiet throughput at least
            "targets": {"p99_within_2x_quiet": ratio is not None and ratio <= 2.0 and attacked["errors"] == 0
                        and rps_ratio >= 0.5,
                        "every_probe_answered": probed["probes"] == probed["probes_answered"]}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default="default,gthread", help="worker classes; 'default': no --worker-class")
    p.add_argument("--half-open", type=int, default=256)
    p.add_argument("--hold", type=float, default=60.0, help="seconds the half-open sockets are held under wrk")
    p.add_argument("--quiet", type=float, default=20.0, help="seconds of wrk before them")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/slow-clients.json"))
    a = p.parse_args()
    bs = load_bench_serving()
    from fuserank import keys
    from fuserank.api.server import DEFAULT_WORKER_CLASS
    from fuserank.batch.pipeline import precompute
    from fuserank.config import HybridSettings
    from fuserank.redis_server import LocalRedis
    from tests.factories import random_artifact
    results = {"command": " ".join(["python", "-u", "benchmarks/bench_slow_clients.py"] + sys.argv[1:]),
               "default_worker_class": DEFAULT_WORKER_CLASS, "cpus": os.cpu_count(), "load_at_start": bs.uptime(),
               "runs": []}
    print(f"== {results['load_at_start']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, LocalRedis() as server:
        model = random_artifact(Path(tmp) / "m", n_users=300, n_anime=200, dim=32)
        version = precompute(model, server.url, HybridSettings(top_n=50, neighbours=10))["version"]
        import redis
        client = redis.Redis.from_url(server.url)
        paths = [f"/v1/users/{100 + u}/recommendations?n=10" for u in range(300)
                 if client.exists(keys.user(version, 100 + u))]
        script_dir = Path(tmp) / "wrk"
        script_dir.mkdir()
        for klass in a.classes.split(","):
            run = measure(bs, klass, model, server.url, paths, a, script_dir)
            q, w = run["quiet"], run["with_half_open"]
            print(f"   {klass:8s} quiet {q['rps']:7.0f} req/s p50 {q['p50_ms']:.2f} p99 {q['p99_ms']:.2f} ms | "
                  f"{a.half_open} half-open {w['rps']:7.0f} req/s p50 {w['p50_ms']:.2f} p99 {w['p99_ms']:.2f} ms "
                  f"errors {w['errors']} | p99 x{run['p99_ratio']} | probes {w['probes_answered']}/{w['probes']} "
                  f"(worst {w['worst_probe_s']} s) | closed by the server {run['half_open_closed_by_server']} (first after "
                  f"{run['first_closed_after_s']} s)  [{bs.load_average()}]", flush=True)
            results["runs"].append(run)
    results["load_at_end"] = bs.uptime()
    print(f"== {results['load_at_end']}", flush=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"== wrote {a.out}", flush=True)


if __name__ == "__main__":
    main()

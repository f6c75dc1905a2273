"""Slow clients: 256 connections that never finish their headers, against `fuserank serve`, per worker class.

    flock /tmp/fuserank-bench.lock .venv/bin/python -u benchmarks/bench_slow_clients.py --classes gthread,gevent

For each worker class: a real redis-server, a small synthetic model precomputed and published, the real
server (2 workers). Then 16 keep-alive client threads ask `GET /v1/users/<id>/recommendations?n=10` for
``--duration`` seconds, quiet and again while ``--half-open`` sockets hold partial headers; /healthz is
probed every 0.2 s meanwhile (2 s timeout). Prints requests/s, p50/p99 and probes answered. The client is
Python on the same machine, so absolute figures are low; the comparison between the two phases is the point.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load(port: int, seconds: float, connections: int = 16) -> dict:
    latencies, errors, stop = [], [0], time.monotonic() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        i = k
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                conn.request("GET", f"/v1/users/{100 + i % 300}/recommendations?n=10")
                conn.getresponse().read()
                latencies.append(time.perf_counter() - t0)
            except OSError:
                errors[0] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            i += connections
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = sorted(x * 1000 for x in latencies)
    return {"requests_per_s": round(len(ms) / seconds), "p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 2), "errors": errors[0]}


def probes(port: int, seconds: float, out: dict) -> None:
    answered = asked = 0
    worst, stop = 0.0, time.monotonic() + seconds
    while time.monotonic() < stop:
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
        time.sleep(0.2)
    out.update(probes=asked, probes_answered=answered, worst_probe_s=round(worst, 3))


def measure(klass: str, model: str, redis_url: str, half_open: int, duration: float) -> dict:
    from tests.factories import start_server, stop_server
    base, proc = start_server(model, redis_url, env={**os.environ, "FUSERANK_WORKER_CLASS": klass})
    port = int(base.rsplit(":", 1)[1])
    try:
        load(port, 2)                                   # warm-up
        quiet = load(port, duration)
        held = []
        for _ in range(half_open):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        probed: dict = {}
        prober = threading.Thread(target=probes, args=(port, duration, probed))
        prober.start()
        attacked = load(port, duration)
        prober.join()
        for s in held:
            s.close()
    finally:
        stop_server(proc)
    return {"worker_class": klass, "half_open": half_open, "quiet": quiet, "with_half_open": {**attacked, **probed}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", default="gthread,gevent")
    p.add_argument("--half-open", type=int, default=256)
    p.add_argument("--duration", type=float, default=10.0)
    a = p.parse_args()
    from fuserank.batch.pipeline import precompute
    from fuserank.config import HybridSettings
    from fuserank.redis_server import LocalRedis
    from tests.factories import random_artifact
    with tempfile.TemporaryDirectory() as tmp, LocalRedis() as server:
        model = random_artifact(Path(tmp) / "m", n_users=300, n_anime=200, dim=32)
        precompute(model, server.url, HybridSettings(top_n=50, neighbours=10))
        for klass in a.classes.split(","):
            print(json.dumps(measure(klass, model, server.url, a.half_open, a.duration)), flush=True)


if __name__ == "__main__":
    main()

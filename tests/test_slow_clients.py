"""Slow clients against the real `fuserank serve`: a few hundred connections that send part of their headers
and then nothing, while probes ask /healthz. A bounded load test on loopback; figures printed (run with -s)."""
import http.client
import os
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest

from tests.factories import random_artifact, start_server, stop_server

pytestmark = pytest.mark.slow

HALF_OPEN = 256
PROBES = 5
PROBE_TIMEOUT_S = 2.0


def slow_client_figures(base: str, half_open: int = HALF_OPEN, probes: int = PROBES) -> dict:
    """Open ``half_open`` connections that never finish their headers, then time ``probes`` /healthz GETs
    and one recommendations GET."""
    url = urlsplit(base)
    held = []

    def get(path: str) -> tuple[bool, float]:
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=PROBE_TIMEOUT_S)
        try:
            conn.request("GET", path)
            ok = conn.getresponse().status == 200
        except OSError:
            ok = False
        finally:
            conn.close()
        return ok, time.perf_counter() - t0

    try:
        for _ in range(half_open):
            s = socket.create_connection((url.hostname, url.port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        time.sleep(0.5)
        answers = []
        for _ in range(probes):
            answers.append(get("/healthz"))
            time.sleep(0.2)
        recommended, _ = get("/v1/users/100/recommendations?n=5")
        return {"half_open": half_open, "probes": probes, "answered": sum(ok for ok, _ in answers),
                "max_probe_s": round(max(s for _, s in answers), 3), "recommendations_answered": recommended}
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("worker_class,holds", [(None, True),            # the default: gevent
                                                ("gthread", False)])   # each slow client holds one of 8 threads
def test_half_open_connections_and_probes(tmp_path, redis_url, worker_class, holds):
    model = random_artifact(tmp_path / "m", n_users=30, n_anime=40, seed=1)
    env = {k: v for k, v in os.environ.items() if k != "FUSERANK_WORKER_CLASS"}
    if worker_class:
        env["FUSERANK_WORKER_CLASS"] = worker_class
    base, proc = start_server(model, redis_url, env=env)
    try:
        figures = slow_client_figures(base)
    finally:
        stop_server(proc)
    print(f"\nslow clients, {worker_class or 'default'}: {figures}")
    assert (figures["answered"] == PROBES) is holds, figures
    assert figures["recommendations_answered"] is holds, figures


def test_native_thread_runs_beside_a_patched_hub():
    """Under gevent's monkey-patching a busy background job (a model load) gets an OS thread: the worker's
    event loop keeps ticking meanwhile (as a greenlet it would stop until the job is done)."""
    script = """
from gevent import monkey; monkey.patch_all()
import time, gevent
from fuserank.api.background import start_native_thread
done, ticks = [], []
def busy():
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:
        sum(range(1000))
    done.append(1)
start_native_thread(busy, name="busy")
t0 = time.perf_counter()
while not done and time.perf_counter() - t0 < 5:
    ticks.append(time.perf_counter()); gevent.sleep(0.01)
print(len(ticks), max(b - a for a, b in zip(ticks, ticks[1:])))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ticks, worst_gap = out.stdout.split()
    assert int(ticks) >= 10 and float(worst_gap) < 1.0, out.stdout   # as a greenlet: no tick for the whole 0.5 s

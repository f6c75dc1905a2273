"""CPU per acknowledged ``PUT /v1/users/<id>/ratings/<anime>`` inside one API process, without HTTP or gunicorn.

    flock /tmp/fuserank-bench.lock nice -n 5 .venv/bin/python benchmarks/profile_feedback_put.py [--writes N]

The app (``create_app``) over the feedback benchmark's cached model and a durable redis-server
(``appendfsync always``), called as WSGI: the thread CPU per PUT through the hot route and through Flask's
dispatch (``hot_route=False``), and the hot route's top functions by own time (cProfile). The fresh-list
thread runs as in production and is not counted (thread CPU of the requesting thread only).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def put_environ(uid: int, aid: int, rating: int) -> dict:
    body = b'{"rating":%d}' % rating
    return {"REQUEST_METHOD": "PUT", "PATH_INFO": f"/v1/users/{uid}/ratings/{aid}", "QUERY_STRING": "",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
            "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
            "REMOTE_ADDR": "127.0.0.1", "wsgi.errors": sys.stderr, "wsgi.version": (1, 0), "wsgi.multithread": True,
            "wsgi.multiprocess": True, "wsgi.run_once": False}


def run(app, users, anime, writes: int) -> float:
    """Thread CPU seconds per PUT over ``writes`` PUTs, each answered 200."""
    statuses = []
    t0 = time.thread_time()
    for i in range(writes):
        body = app(put_environ(int(users[i % len(users)]), int(anime[(i * 31) % len(anime)]), i % 10 + 1),
                   lambda status, headers: statuses.append(status))
        b"".join(body)
    per = (time.thread_time() - t0) / writes
    assert statuses == ["200 OK"] * writes, set(statuses)
    return per


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--writes", type=int, default=3000)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "fuserank-bench-feedback"))
    a = p.parse_args()
    from fuserank.api.app import create_app
    from fuserank.artifacts import ModelArtifact
    from fuserank.config import ServeSettings
    from fuserank.redis_server import LocalRedis
    model_dir = sorted(Path(a.workdir).glob("model-*"))[0]      # bench_feedback.py's cached model
    model = ModelArtifact.load(str(model_dir))
    users, anime = model.user_ids[:5000], model.anime_ids[:2000]
    with LocalRedis(dir=str(Path(a.workdir) / "redis-profile")) as server:
        settings = ServeSettings(model=str(model_dir), redis_url=server.url, rate_limit=0)
        hot = create_app(settings)
        flask_only = create_app(settings, service=hot.extensions["fuserank"], hot_route=False)
        run(hot, users, anime, 200)                                                 # warm-up
        for name, app in (("hot route", hot), ("flask dispatch", flask_only), ("hot route", hot)):
            print(f"{name}: {run(app, users, anime, a.writes) * 1e3:.3f} ms CPU per PUT", flush=True)
        profile = cProfile.Profile()
        profile.enable()
        run(hot, users, anime, a.writes)
        profile.disable()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(18)
        print(out.getvalue())


if __name__ == "__main__":
    main()

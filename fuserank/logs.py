"""Logging for every `fuserank` command: plain lines by default, JSON lines with ``LOG_FORMAT=json``.

Every line carries the model version and the list version it is about, when they are known:

    2026-11-27 10:00:00,123 INFO fuserank.precompute [model=3f2a.. list=3f2a..-9c1d..]: users lists written: 5120
    {"ts": "2026-11-27T10:00:00.123Z", "level": "INFO", "logger": "fuserank.precompute", "message": "...",
     "model_version": "3f2a..", "list_version": "3f2a..-9c1d..", "pid": 4242}

Where the versions come from, highest first:

* ``context(**fields)``: a ``contextvars`` override for the current thread or task;
* ``provide(name, fn)``: a callable asked on every record, e.g. the API's list version read from the
  service's cached pointer (it must do no I/O: it runs on every line);
* ``bind(**fields)``: process-wide values, seen by every thread (Beam's and gunicorn's included),
  e.g. the model version of ``--model`` that `fuserank precompute` / `serve` were given.

``configure()`` (called by ``fuserank.cli.main`` for every command and by the API server) reads
``LOG_LEVEL`` (default INFO) and ``LOG_FORMAT`` (``plain`` | ``json``). Third-party chatter (TensorFlow's
oneDNN / CPU-feature banners, Beam's optional-dependency notes, Keras UserWarnings, Comet ML's console) is
kept out unless ``set_verbose(True)`` (``fuserank --verbose``): the libraries' environment switches get
quiet defaults before they are imported, and their log records below ERROR are dropped. Extra structured fields go in
``extra={"fields": {...}}``: JSON keys in JSON mode, ``key=value`` pairs after the message in plain mode.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import time
import warnings
from typing import Callable

from fuserank.config import environment, export
from fuserank.errors import FuseRankError

FIELDS = ("model_version", "list_version", "data_version")
FORMATS = ("plain", "json")
LEVEL_ENV, FORMAT_ENV = "LOG_LEVEL", "LOG_FORMAT"

# Read by the libraries at import: set (unless already set) before any of them is imported.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2",          # TensorFlow's C++ INFO/WARNING lines (oneDNN, CPU features)
             "COMET_LOGGING_CONSOLE": "ERROR"}     # Comet ML's console lines (offline-mode notes)
QUIET_PACKAGES = ("apache_beam", "tensorflow", "keras", "absl", "comet_ml", "h5py")
_PACKAGE_PATH = re.compile(r"[/\\](?:%s)[/\\]" % "|".join(QUIET_PACKAGES))
_verbose = {"on": False}

_bound: dict[str, str] = {}
_providers: dict[str, Callable[[], str | None]] = {}
_context: contextvars.ContextVar[dict | None] = contextvars.ContextVar("fuserank_log_context", default=None)


class LogConfigError(FuseRankError):
    pass


# -- where the versions come from --------------------------------------------------------------
def bind(**fields) -> None:
    """Process-wide fields (every thread sees them); ``None`` removes one."""
    for name, value in fields.items():
        if value is None:
            _bound.pop(name, None)
        else:
            _bound[name] = str(value)


def provide(name: str, fn: Callable[[], str | None] | None) -> None:
    """A field computed per record by ``fn`` (cheap, no I/O; an exception or None leaves it unset)."""
    if fn is None:
        _providers.pop(name, None)
    else:
        _providers[name] = fn


@contextlib.contextmanager
def context(**fields):
    """Fields for the lines logged inside the block, in this thread / task only."""
    token = _context.set({**(_context.get() or {}), **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current() -> dict:
    """The fields a line logged now would carry."""
    out = dict(_bound)
    for name, fn in list(_providers.items()):
        try:
            value = fn()
        except Exception:  # noqa: BLE001 - a provider must never break logging
            value = None
        if value is not None:
            out[name] = str(value)
    out.update(_context.get() or {})
    return out


def reset() -> None:
    """Forget every bound field and provider (tests; a process that serves another model)."""
    _bound.clear()
    _providers.clear()


def set_verbose(on: bool) -> None:
    """``on``: third-party output as the libraries make it. Off (the default): quiet environment defaults
    (``QUIET_ENV``, never over a value already set), Keras' UserWarnings ignored, and ``configure()``'s
    handler drops third-party records below ERROR."""
    _verbose["on"] = bool(on)
    if on:
        return
    for name, value in QUIET_ENV.items():
        export(name, value, overwrite=False)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"keras(\.|$)")


def verbose() -> bool:
    return _verbose["on"]


class ThirdPartyFilter(logging.Filter):
    """Drops records below ERROR from ``QUIET_PACKAGES``, by logger name or by source file (Beam logs some
    notes on the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or _verbose["on"]:
            return True
        if record.name.partition(".")[0] in QUIET_PACKAGES:
            return False
        return not _PACKAGE_PATH.search(record.pathname or "")


class VersionFilter(logging.Filter):
    """Sets ``record.model_version`` / ``list_version`` / ``data_version`` (None when unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = current()
        for name in FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, fields.get(name))
        return True


# -- formats -------------------------------------------------------------------------------------
def _extra(record: logging.LogRecord) -> dict:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class PlainFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER [model=.. list=..]: message key=value ...``"""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s%(versions)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        tags = [f"{short}={getattr(record, name)}" for name, short in
                (("model_version", "model"), ("list_version", "list"), ("data_version", "data"))
                if getattr(record, name, None)]
        record.versions = f" [{' '.join(tags)}]" if tags else ""
        line = super().format(record)
        extra = _extra(record)
        if extra:
            head, sep, tail = line.partition("\n")  # key=value pairs stay on the message's line
            line = head + " " + " ".join(f"{k}={v}" for k, v in extra.items()) + sep + tail
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, logger, message, versions, pid, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        out["pid"] = record.process
        for key, value in _extra(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (so a replaced stderr is never written after close)."""

    def __init__(self, stream=None):
        super().__init__(stream)
        self._fixed = stream

    @property
    def stream(self):
        return self._fixed if self._fixed is not None else sys.stderr

    @stream.setter
    def stream(self, value):
        self._fixed = value


def formatter(fmt: str) -> logging.Formatter:
    if fmt not in FORMATS:
        raise LogConfigError(f"{FORMAT_ENV}: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    return JsonFormatter() if fmt == "json" else PlainFormatter()


def configure(level: str | int | None = None, fmt: str | None = None, stream=None, force: bool = False) -> bool:
    """Install FuseRank's handler on the root logger (replacing the one a previous call installed).

    When some other handler already sits on the root logger (a test runner, an application that
    embeds FuseRank) nothing is changed unless ``force``, as ``logging.basicConfig`` does. Returns
    whether the handler was installed. Invalid ``LOG_FORMAT`` / ``LOG_LEVEL`` fail naming the variable.
    """
    fmt = (fmt or environment().log_format or "plain").strip().lower()
    level = level if level is not None else (environment().log_level or "INFO")
    form = formatter(fmt)
    if isinstance(level, str):
        name = level.strip().upper()
        if not isinstance(logging.getLevelName(name), int):
            raise LogConfigError(f"{LEVEL_ENV}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {level!r}")
        level = logging.getLevelName(name)
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_fuserank", False)]
    if not force and len(ours) < len(root.handlers):
        return False
    for h in ours:
        root.removeHandler(h)
    handler = _StderrHandler(stream)
    handler._fuserank = True
    handler.setFormatter(form)
    handler.addFilter(ThirdPartyFilter())
    handler.addFilter(VersionFilter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings become log lines too (JSON in JSON mode)
    return True


def _manifest_field(directory: str | None, key: str) -> str | None:
    """A field of ``DIRECTORY/manifest.json`` when it is a local directory (never a network read)."""
    if not directory or "://" in directory:
        return None
    try:
        with open(os.path.join(directory, "manifest.json")) as fh:
            value = json.load(fh).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def configure_command(command: str, settings: dict, verbose: bool = False) -> None:
    """``configure()`` for a `fuserank` command, with the versions its resolved settings name bound.

    ``model`` DIR binds the model version from DIR's manifest (precompute, serve, evaluate, inspect);
    ``train``'s ``data`` DIR binds ``data_version`` (the ingest's content hash: the model version exists
    only once training has exported the artifact). The list version is bound by the stage that
    computes it (``bind(list_version=...)``) and by the API from its cached pointer.
    """
    set_verbose(verbose)
    configure()
    reset()
    model_version = _manifest_field(settings.get("model"), "model_version")
    if model_version:
        bind(model_version=model_version)
    if command == "train":
        data_version = _manifest_field(settings.get("data"), "content_hash")
        if data_version:
            bind(data_version=data_version[:16])

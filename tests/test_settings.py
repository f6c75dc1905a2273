"""One configuration model: defaults < params file (--params / $FUSERANK_PARAMS) < environment < flags.

Every layer's precedence, the help texts that show the effective defaults, and the errors: a bad value
from any layer fails at start naming the setting and the layer it came from.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fuserank.cli import COMMANDS, main, resolve
from fuserank.config import HybridSettings

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["--model", "m", "--redis-url", "redis://127.0.0.1:1/0"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No FUSERANK_* / REDIS_URL from the machine running the tests leaks into these checks."""
    import os
    for name in list(os.environ):
        if name.startswith("FUSERANK_") or name == "REDIS_URL":
            monkeypatch.delenv(name)


def write(tmp_path, name, doc):
    path = tmp_path / name
    path.write_text(json.dumps(doc) if name.endswith(".json") else yaml.safe_dump(doc))
    return str(path)


def test_defaults_are_the_typed_settings_defaults():
    ns = resolve("precompute", REQUIRED)
    assert (ns.top_n, ns.weight_model, ns.block_size, ns.allow_eviction) == (None, None, 512, False)
    assert ns._sources == {"model": "flag", "redis_url": "flag"}
    # hybrid knobs left unset: what train chose for the model, else HybridSettings' defaults
    assert HybridSettings.for_model({}, **vars(ns)) == HybridSettings()
    chosen = {"chosen": {"hybrid": {"weight_stage2": 0.3, "stage2_neighbours": 5}}}
    assert HybridSettings.for_model(chosen, **vars(ns)) == HybridSettings(weight_stage2=0.3, stage2_neighbours=5)
    pinned = resolve("precompute", [*REQUIRED, "--weight-stage2", "0.1"])
    assert HybridSettings.for_model(chosen, **vars(pinned)) == HybridSettings(weight_stage2=0.1, stage2_neighbours=5)


def test_params_file_beats_defaults_yaml_and_json(tmp_path):
    doc = {"hybrid": {"top-n": 20, "weight-model": 0.5}, "precompute": {"block-size": 7}, "gate": {"ndcg-margin": 0.1}}
    for name in ("p.yaml", "p.json"):
        path = write(tmp_path, name, doc)
        ns = resolve("precompute", ["--params", path, *REQUIRED])
        assert (ns.top_n, ns.weight_model, ns.block_size) == (20, 0.5, 7)
        assert ns._sources["top_n"] == f"params file {path} [hybrid] top-n"
        assert ns.neighbours is None
    # --params=FILE, and given before the command
    ns = resolve("precompute", [f"--params={path}", *REQUIRED])
    assert ns.top_n == 20


def test_params_file_from_environment_and_never_implicitly(tmp_path, monkeypatch):
    path = write(tmp_path, "p.yaml", {"hybrid": {"top-n": 21}})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"hybrid": {"top-n": 3}}))
    assert resolve("precompute", REQUIRED).top_n is None        # params.yaml in the cwd is not read
    monkeypatch.setenv("FUSERANK_PARAMS", path)
    assert resolve("precompute", REQUIRED).top_n == 21
    other = write(tmp_path, "q.yaml", {"hybrid": {"top-n": 22}})
    assert resolve("precompute", ["--params", other, *REQUIRED]).top_n == 22   # --params beats $FUSERANK_PARAMS


def test_environment_beats_file_and_flags_beat_environment(tmp_path, monkeypatch):
    path = write(tmp_path, "p.yaml", {"hybrid": {"top-n": 20, "weight-stage1": 0.2}})
    monkeypatch.setenv("FUSERANK_TOP_N", "30")
    ns = resolve("precompute", ["--params", path, *REQUIRED])
    assert (ns.top_n, ns.weight_stage1) == (30, 0.2)
    assert ns._sources["top_n"] == "environment FUSERANK_TOP_N"
    ns = resolve("precompute", ["--params", path, *REQUIRED, "--top-n", "40"])
    assert ns.top_n == 40 and ns._sources["top_n"] == "flag"
    # an empty variable is unset (ConfigMaps often carry empty keys)
    monkeypatch.setenv("FUSERANK_TOP_N", "")
    assert resolve("precompute", ["--params", path, *REQUIRED]).top_n == 20


def test_redis_url_layers_and_required_settings_from_layers(tmp_path, monkeypatch):
    path = write(tmp_path, "p.yaml", {"precompute": {"redis-url": "redis://file:6379/0", "model": "/models/m"}})
    ns = resolve("precompute", ["--params", path])          # --model / --redis-url required, given by the file
    assert (ns.redis_url, ns.model) == ("redis://file:6379/0", "/models/m")
    monkeypatch.setenv("REDIS_URL", "redis://legacy:6379/0")
    assert resolve("precompute", ["--params", path]).redis_url == "redis://legacy:6379/0"
    monkeypatch.setenv("FUSERANK_REDIS_URL", "redis://new:6379/0")
    assert resolve("precompute", ["--params", path]).redis_url == "redis://new:6379/0"
    assert resolve("rollback", []).redis_url == "redis://new:6379/0"
    monkeypatch.setenv("FUSERANK_MODEL", "/env/m")
    assert resolve("precompute", []).model == "/env/m"


def test_booleans_and_choices_from_layers(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSERANK_LENIENT", "true")
    assert resolve("ingest", ["--ratings", "r.csv", "--out", "o"]).lenient is True
    path = write(tmp_path, "p.yaml", {"ingest": {"lenient": True, "ratings": "r.csv"}})
    monkeypatch.setenv("FUSERANK_LENIENT", "0")
    assert resolve("ingest", ["--params", path, "--out", "o"]).lenient is False
    monkeypatch.setenv("FUSERANK_OBJECTIVE", "ranking")
    assert resolve("train", ["--data", "d", "--out", "o"]).objective == "ranking"


def test_the_repo_params_yaml_is_a_valid_params_file_for_every_command_it_configures():
    """params.yaml (what DVC runs) read through --params gives every command exactly its values."""
    path = str(ROOT / "params.yaml")
    params = yaml.safe_load(Path(path).read_text())
    cases = {"ingest": (["--out", "o"], ["ingest"]), "train": (["--data", "d", "--out", "o"], ["train"]),
             "precompute": (REQUIRED, ["hybrid", "precompute"]), "evaluate": ([], ["hybrid", "evaluate"]),
             "serve": (REQUIRED, ["hybrid"])}
    for command, (argv, sections) in cases.items():
        ns = resolve(command, ["--params", path, *argv])
        for section in sections:
            for key, value in (params.get(section) or {}).items():
                assert getattr(ns, key.replace("-", "_")) == value, (command, section, key)


@pytest.mark.parametrize("env, argv, expected", [
    ({"FUSERANK_TOP_N": "0"}, ["precompute", *REQUIRED], ["--top-n", "environment FUSERANK_TOP_N", "1..1000"]),
    ({"FUSERANK_WEIGHT_MODEL": "-1"}, ["serve", *REQUIRED], ["--weight-model", "FUSERANK_WEIGHT_MODEL", ">= 0"]),
    ({"FUSERANK_OBJECTIVE": "magic"}, ["train", "--data", "d", "--out", "o"], ["--objective", "FUSERANK_OBJECTIVE", "magic"]),
    ({"FUSERANK_LENIENT": "maybe"}, ["ingest", "--ratings", "r", "--out", "o"], ["--lenient", "FUSERANK_LENIENT"]),
    ({"FUSERANK_KEEP": "1"}, ["cleanup", "--redis-url", "redis://x"], ["--keep", "FUSERANK_KEEP"]),
])
def test_invalid_environment_values_fail_at_start_naming_setting_and_layer(env, argv, expected, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err


@pytest.mark.parametrize("doc, expected", [
    ({"hybrid": {"top-n": "abc"}}, ["--top-n", "[hybrid] top-n", "expected an integer"]),
    ({"precompute": {"block-size": 0}}, ["--block-size", "[precompute] block-size"]),
    ({"hybrid": {"top-n": 5.5}}, ["--top-n", "5.5"]),
    ({"precompute": {"blocksize": 7}}, ["'blocksize'", "not a setting of `fuserank precompute`", "block-size"]),
    ({"hybird": {"top-n": 5}}, ["unknown section 'hybird'"]),
    ({"hybrid": [1, 2]}, ["section 'hybrid' must be a mapping"]),
])
def test_invalid_params_file_fails_at_start_naming_setting_and_file(doc, expected, tmp_path, capsys):
    path = write(tmp_path, "bad.yaml", doc)
    with pytest.raises(SystemExit) as exc:
        main(["precompute", "--params", path, *REQUIRED])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert path in err
    for text in expected:
        assert text in err, err


def test_missing_or_malformed_params_file_names_it_and_where_it_was_named(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        main(["precompute", "--params", str(tmp_path / "nope.yaml"), *REQUIRED])
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "--params" in err
    monkeypatch.setenv("FUSERANK_PARAMS", str(tmp_path / "gone.json"))
    with pytest.raises(SystemExit):
        main(["precompute", *REQUIRED])
    err = capsys.readouterr().err
    assert "gone.json" in err and "FUSERANK_PARAMS" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("hybrid: {top-n: [")
    monkeypatch.delenv("FUSERANK_PARAMS")
    with pytest.raises(SystemExit):
        main(["precompute", "--params", str(broken), *REQUIRED])
    assert "not valid YAML/JSON" in capsys.readouterr().err
    assert main(["precompute", "--params"]) == 2


def help_of(command: str, capsys) -> str:
    """`fuserank COMMAND --help`: exits 0; its text with the line wrapping undone."""
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_subcommand_help_shows_effective_defaults_and_environment_names(monkeypatch, capsys):
    monkeypatch.setenv("FUSERANK_TOP_N", "30")
    monkeypatch.setenv("REDIS_URL", "redis://:s3cret@cache:6379/0")
    out = help_of("precompute", capsys)
    assert "(default: 30)" in out and "FUSERANK_TOP_N" in out and "FUSERANK_WEIGHT_MODEL" in out
    assert "--params FILE" in out and "FUSERANK_PARAMS" in out
    assert "s3cret" not in out and "redis://:***@cache:6379/0" in out
    for command in ("train", "serve", "ingest", "cleanup"):
        out = help_of(command, capsys)
        assert "(default:" in out and "[env FUSERANK_" in out


def test_top_level_help_lists_every_command_and_setting_with_its_default(monkeypatch, tmp_path):
    path = write(tmp_path, "p.yaml", {"hybrid": {"top-n": 25}})
    proc = subprocess.run([sys.executable, "-m", "fuserank", "--params", path, "--help"], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "FUSERANK_BLOCK_SIZE": "9"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for command in COMMANDS:
        assert f"\n  {command}" in out, command
    lines = {tuple(line.split()[:2]) for line in out.splitlines() if line.startswith("    --")}
    assert ("--top-n", "25") in lines and ("--block-size", "9") in lines and ("--epochs", "None") in lines
    assert "FUSERANK_WEIGHT_MODEL" in out and "FUSERANK_PARAMS" in out and "REDIS_URL" in out


def test_serve_help_lists_every_api_setting_with_the_api_key_hidden(monkeypatch, capsys):
    monkeypatch.setenv("FUSERANK_API_KEY", "k3y-one,k3y-two")
    monkeypatch.setenv("FUSERANK_RATE_LIMIT", "5")
    out = help_of("serve", capsys)
    for name in ("FUSERANK_RATE_LIMIT", "FUSERANK_RATE_WINDOW_S", "FUSERANK_API_KEY", "FUSERANK_WORKER_CLASS",
                 "FUSERANK_MODELS_URI", "FUSERANK_LOG_SAMPLE"):
        assert f"[env {name}]" in out, name
    assert "(default: 5)" in out and "(default: ***)" in out and "k3y" not in out


def test_serve_runs_the_api_with_one_settings_object_from_every_layer(tmp_path, monkeypatch):
    from fuserank.config import ServeSettings
    from tests.factories import random_artifact
    model = random_artifact(tmp_path / "m")
    called = []
    monkeypatch.setattr("fuserank.api.server.serve", called.append)
    monkeypatch.setenv("FUSERANK_API_KEY", "a, b")
    monkeypatch.setenv("FUSERANK_RATE_LIMIT", "5")
    path = write(tmp_path, "p.yaml", {"serve": {"log-sample": 0.25}, "hybrid": {"top-n": 7}})
    assert main(["serve", "--params", path, "--model", model, "--redis-url", "redis://127.0.0.1:1/0",
                 "--rate-window-s", "7", "--worker-class", "sync"]) == 0
    (s,) = called
    assert s == ServeSettings(model=model, redis_url="redis://127.0.0.1:1/0", api_key=("a", "b"), rate_limit=5,
                              rate_window_s=7, worker_class="sync", log_sample=0.25,
                              hybrid=HybridSettings(top_n=7))


def test_config_show_names_the_layer_of_every_value_and_never_a_secret(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, "p.yaml", {"hybrid": {"top-n": 20}, "precompute": {"block-size": 7}})
    monkeypatch.setenv("FUSERANK_REDIS_URL", "redis://:s3cret@cache:6379/0")
    monkeypatch.setenv("FUSERANK_API_KEY", "k3y")
    monkeypatch.setenv("LOG_FORMAT", "json")
    assert main(["config", "show", "--params", path, "precompute", "--weight-model", "0.5"]) == 0
    rows = {tuple(line.split()[:1]): line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows[("--top-n",)] == ["20", "params", "file", path, "[hybrid]", "top-n"]
    assert rows[("--block-size",)] == ["7", "params", "file", path, "[precompute]", "block-size"]
    assert rows[("--redis-url",)] == ["redis://:***@cache:6379/0", "environment", "FUSERANK_REDIS_URL"]
    assert rows[("--weight-model",)] == ["0.5", "flag"]
    assert rows[("--neighbours",)] == ["None", "default"]
    assert rows[("LOG_FORMAT",)] == ["json"]

    assert main(["config", "show", "--json", "--params", path]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["commands"]["precompute"]["top_n"] == {"flag": "--top-n", "value": 20,
                                                        "source": f"params file {path} [hybrid] top-n"}
    assert shown["commands"]["serve"]["api_key"] == {"flag": "--api-key", "value": "***",
                                                     "source": "environment FUSERANK_API_KEY"}
    assert shown["commands"]["serve"]["model"]["value"] is None        # required, not given: shown unset
    assert set(shown["commands"]) == set(COMMANDS) - {"config"} and shown["environment"]["log_format"] == "json"
    assert "s3cret" not in out and "k3y" not in out

    assert main(["config", "show", "serve", "--json"]) == 0          # --json after the command too
    assert json.loads(capsys.readouterr().out)["commands"]["serve"]["rate_limit"]["value"] == 60

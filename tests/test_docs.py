"""The documentation stays true to the tree: the architecture picture is what its script draws, the paths
the docs name exist, and the READMEs describe the present (no numbered work periods)."""
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", ROOT / "docs" / "architecture.md"]


def test_architecture_svg_is_what_its_script_draws(tmp_path):
    spec = importlib.util.spec_from_file_location("architecture", ROOT / "docs" / "architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.draw(str(tmp_path / "architecture.svg"))
    assert (tmp_path / "architecture.svg").read_bytes() == (ROOT / "docs" / "architecture.svg").read_bytes(), \
        "docs/architecture.svg is stale: run .venv/bin/python docs/architecture.py"


def test_architecture_names_modules_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"`((?:api|batch|training|evaluation|schemas|fuserank|benchmarks|docs)/[\w/.]+\.(?:py|json|md))",
                            text))
    assert len(paths) > 15
    assert [p for p in sorted(paths) if not (ROOT / p).is_file()] == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_do_not_narrate_work_periods(doc):
    assert re.findall(r"\b(?:session|stop) \d+", doc.read_text(), re.I) == []

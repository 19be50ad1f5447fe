"""A local stand-in for the Hugging Face Hub API (the hub cannot be reached from these machines).

`fake_hub` replaces `huggingface_hub.HfApi` with a recorder of create_repo / create_commit calls
that keeps each uploaded file's bytes, makes the push checks see a token (a sentinel that must
never show up in any output or file) and switches offline mode off for pgm's check only: the
libraries that read huggingface_hub's constants at import (transformers, kernels) stay offline.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

SENTINEL = "hf_SENTINELtokenNEVERprintOrWrite0123456789"


class FakeHub:
    def __init__(self):
        self.repos: list[dict] = []
        self.commits: list[dict] = []
        self.fail: BaseException | None = None  # raised by the next create_repo when set

    def api_class(self):
        hub = self

        class FakeHfApi:
            def __init__(self, *args, **kwargs):
                assert not args and not kwargs, "pgm should let HfApi find the token itself"

            def create_repo(self, repo_id, *, private=None, exist_ok=False, **kwargs):
                if hub.fail is not None:
                    raise hub.fail
                hub.repos.append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok, **kwargs})
                return f"https://huggingface.co/{repo_id}"

            def create_commit(self, repo_id, operations, *, commit_message, **kwargs):
                files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
                hub.commits.append({"repo_id": repo_id, "files": files, "message": commit_message, **kwargs})
                return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{len(hub.commits):040x}")

        return FakeHfApi

    @property
    def card(self) -> str:
        return self.commits[-1]["files"]["README.md"].decode()


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import constants

    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", hub.api_class())
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return hub


def assert_no_token_anywhere(hub: FakeHub, captured: str, *folders: Path) -> None:
    """The sentinel token is in no output, no file under `folders` and no uploaded byte."""
    assert SENTINEL not in captured
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file():
                assert SENTINEL.encode() not in path.read_bytes(), path
    for commit in hub.commits:
        for name, data in commit["files"].items():
            assert SENTINEL.encode() not in data, name

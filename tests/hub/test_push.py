"""The upload itself against a local stand-in for the Hub API: which files go, and every failure as one
line naming the repo and the fix, with the local folder left as it was."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from paligemma_cli.errors import PgmError
from paligemma_cli.hub.push import check_push, pgm_files, push_folder
from paligemma_cli.outputs import claim_output
from tests.hub.fake import fake_hub  # noqa: F401  (a fixture)

REPO = "someone/some-model"


@contextmanager
def pgm_folder(tmp_path):
    """A folder as pgm train leaves it, still claimed by the run: files and folders it recorded,
    temp files, and a name recorded but gone."""
    out = tmp_path / "run"
    with claim_output(out, "train") as output:
        output.record("adapter_model.safetensors", "README.md", "train_log.jsonl", "checkpoints", "wandb",
                      "tensorboard", "best", ".tmp-best", "run_config.json.tmp", "gone.json")
        for name in ("adapter_model.safetensors", "README.md", "train_log.jsonl", "run_config.json.tmp"):
            (out / name).write_text(name)
        for name in ("checkpoints", "wandb", "tensorboard", "best", ".tmp-best"):
            (out / name).mkdir()
        yield output


def test_only_the_files_pgm_wrote_at_the_top_are_uploaded(tmp_path):
    # not folders, not temp files, not what is recorded but gone (and a folder holding anything pgm
    # did not write is never claimed: outputs.py)
    with pgm_folder(tmp_path) as output:
        assert pgm_files(output) == ["README.md", "adapter_model.safetensors", "train_log.jsonl"]


def failure(kind):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if kind in (401, 403, 500):
        request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
        return HfHubHTTPError(f"{kind} Client Error", response=httpx2.Response(kind, request=request))
    return {"connect": httpx2.ConnectError("Name or service not known"),
            "offline": OfflineModeIsEnabled("offline"), "timeout": httpx2.ReadTimeout("timed out")}[kind]


@pytest.mark.parametrize("kind, says, fix", [
    (401, "the hub refused the token (401 Unauthorized)", "hf auth login"),
    (403, "the token may not write there (403 Forbidden", "write access"),
    (500, "the hub answered 500", "status.huggingface.co"),
    ("connect", "could not be reached (ConnectError)", "Check the network connection"),
    ("timeout", "could not be reached (ReadTimeout)", "Check the network connection"),
    ("offline", "could not be reached (OfflineModeIsEnabled)", "Check the network connection"),
])
def test_push_failures_are_one_line_naming_the_repo_and_keep_the_folder(kind, says, fix, tmp_path, fake_hub):
    with pgm_folder(tmp_path) as output:
        out = output.path
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "README.md"
                  and not p.name.startswith(".pgm-")}
        fake_hub.fail = failure(kind)
        with pytest.raises(PgmError) as exc:
            push_folder(output, REPO, pgm_files(output), private=False, card="# card\n", retry="push again")
    message, hint = exc.value.message, exc.value.hint
    assert message.startswith(f"Pushing to {REPO} failed: ") and says in message and f"{out} are kept" in message
    assert "\n" not in message + hint and fix in hint and hint.endswith("then push again.")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "README.md"
                  and not p.name.startswith(".pgm-")} == before
    assert fake_hub.commits == []


def test_check_push_takes_the_offline_variables_as_huggingface_hub_does(fake_hub, monkeypatch):
    check_push(REPO)  # a token, online: fine
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(PgmError, match="HF_HUB_OFFLINE"):
        check_push(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # huggingface_hub reads HF_HUB_OFFLINE first
    check_push(REPO)


def test_the_card_replaces_readme_and_goes_in_the_same_commit(tmp_path, fake_hub):
    with pgm_folder(tmp_path) as output:
        out = output.path
        url = push_folder(output, REPO, ["train_log.jsonl"], private=True, card="# the card\n", retry="push again")
    assert (out / "README.md").read_text() == "# the card\n"
    assert fake_hub.repos == [{"repo_id": REPO, "private": True, "exist_ok": True}]
    assert [sorted(c["files"]) for c in fake_hub.commits] == [["README.md", "train_log.jsonl"]]
    assert url == f"https://huggingface.co/{REPO}/commit/{1:040x}"  # the commit's URL, as create_commit gave it

"""The upload itself against a local stand-in for the Hub API: which files go, and every failure as one
line naming the repo and the fix, with the local folder left as it was."""

from __future__ import annotations

import pytest

from paligemma_cli.errors import PgmError
from paligemma_cli.hub.push import check_push, pgm_files, push_folder
from paligemma_cli.outputs import record_written
from tests.hub.fake import fake_hub  # noqa: F401  (a fixture)

REPO = "someone/some-model"


def pgm_folder(tmp_path):
    """A folder as pgm train leaves it: files and folders it recorded, and things it did not."""
    out = tmp_path / "run"
    out.mkdir()
    record_written(out, [], reset=True)
    names = ["adapter_model.safetensors", "README.md", "train_log.jsonl", "checkpoints", "wandb", "tensorboard",
             "best", ".tmp-best", "run_config.json.tmp", "gone.json"]
    record_written(out, names)
    for name in ("adapter_model.safetensors", "README.md", "train_log.jsonl", "run_config.json.tmp",
                 "notes.txt"):
        (out / name).write_text(name)
    for name in ("checkpoints", "wandb", "tensorboard", "best", ".tmp-best"):
        (out / name).mkdir()
    return out


def test_only_the_files_pgm_wrote_at_the_top_are_uploaded(tmp_path):
    # not folders, not temp files, not the user's notes.txt, not what is recorded but gone
    assert pgm_files(pgm_folder(tmp_path)) == ["README.md", "adapter_model.safetensors", "train_log.jsonl"]


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
    out = pgm_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "README.md"}
    fake_hub.fail = failure(kind)
    with pytest.raises(PgmError) as exc:
        push_folder(out, REPO, pgm_files(out), private=False, card="# card\n", retry="push again")
    message, hint = exc.value.message, exc.value.hint
    assert message.startswith(f"Pushing to {REPO} failed: ") and says in message and f"{out} are kept" in message
    assert "\n" not in message + hint and fix in hint and hint.endswith("then push again.")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "README.md"} == before
    assert fake_hub.commits == []


def test_check_push_takes_the_offline_variables_as_huggingface_hub_does(fake_hub, monkeypatch):
    check_push(REPO)  # a token, online: fine
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(PgmError, match="HF_HUB_OFFLINE"):
        check_push(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # huggingface_hub reads HF_HUB_OFFLINE first
    check_push(REPO)


def test_the_card_replaces_readme_and_goes_in_the_same_commit(tmp_path, fake_hub):
    out = pgm_folder(tmp_path)
    url = push_folder(out, REPO, ["train_log.jsonl"], private=True, card="# the card\n", retry="push again")
    assert (out / "README.md").read_text() == "# the card\n"
    assert fake_hub.repos == [{"repo_id": REPO, "private": True, "exist_ok": True}]
    assert [sorted(c["files"]) for c in fake_hub.commits] == [["README.md", "train_log.jsonl"]]
    assert url == f"https://huggingface.co/{REPO}/commit/{1:040x}"  # the commit's URL, as create_commit gave it

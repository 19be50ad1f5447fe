"""`pgm merge --push-to-hub` through the real CLI: the merged folder and its card in one commit, the
card recorded as pgm's, and a missing token stopping the merge before it starts."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from paligemma_cli.cli import app
from tests.hub.fake import assert_no_token_anywhere, fake_hub  # noqa: F401  (a fixture)

runner = CliRunner()
REPO = "someone/merged-paligemma"


def invoke(*args):
    result = runner.invoke(app, ["merge", *map(str, args)])
    return result, result.output


@pytest.mark.parametrize("output_format", ["full", "adapter"])
def test_merge_pushes_the_folder_and_its_card_in_one_commit(output_format, merge_inputs, tmp_path, fake_hub,
                                                            capfd):
    out = tmp_path / "merged"
    base = merge_inputs["base"]
    result, text = invoke("ties", "--base-model", base, "--model", merge_inputs["adapter_a"], "--model",
                          merge_inputs["adapter_b"], "--weight", "1", "--weight", "0.5", "--density", "0.5",
                          "--output-format", output_format, "-o", out, "--push-to-hub", REPO)
    assert result.exit_code == 0, text
    assert f"Pushed {out} to https://huggingface.co/{REPO}/commit/" in " ".join(text.split())
    assert fake_hub.repos == [{"repo_id": REPO, "private": False, "exist_ok": True}]
    assert len(fake_hub.commits) == 1
    files = fake_hub.commits[0]["files"]
    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert set(files) == visible and "README.md" in files and "pgm_merge.json" in files
    assert all(files[name] == (out / name).read_bytes() for name in files)
    weights = {"adapter_model.safetensors", "adapter_config.json"} if output_format == "adapter" \
        else {"model.safetensors", "config.json"}
    assert weights <= set(files)
    assert "README.md" in json.loads((out / ".pgm-run.json").read_text())["written"]

    card = fake_hub.card
    meta = card.split("---\n")[1]
    assert f"library_name: {'peft' if output_format == 'adapter' else 'transformers'}" in meta and "- ties" in meta
    assert "with **ties**" in card and f"| base model | {base} |" in card
    assert f"| model 1 | {merge_inputs['adapter_a']} (weight 1) |" in card
    assert f"| model 2 | {merge_inputs['adapter_b']} (weight 0.5) |" in card and "| density | 0.5 |" in card
    if output_format == "adapter":
        assert f'PeftModel.from_pretrained(base, "{REPO}")' in card
        assert f'AutoProcessor.from_pretrained("{base}")' in card  # an adapter folder has no processor
    else:
        assert f'AutoModelForImageTextToText.from_pretrained("{REPO}", dtype=torch.bfloat16)' in card
        assert f'AutoProcessor.from_pretrained("{REPO}")' in card
    command = (f"pgm merge ties --base-model {base} --model {merge_inputs['adapter_a']} --model "
               f"{merge_inputs['adapter_b']} --weight 1 --weight 0.5 --density 0.5")
    assert command in card and f"-o {out} --push-to-hub {REPO}" in card
    assert_no_token_anywhere(fake_hub, text + "".join(capfd.readouterr()), out)


def test_merge_without_a_token_stops_before_merging(merge_inputs, tmp_path, fake_hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    out = tmp_path / "merged"
    result, text = invoke("ties", "--base-model", merge_inputs["base"], "--model", merge_inputs["adapter_a"],
                          "--model", merge_inputs["adapter_b"], "-o", out, "--push-to-hub", REPO, "--hub-private")
    lines = [line for line in text.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, text
    assert lines[0].startswith(f"Error: --push-to-hub {REPO}: no Hugging Face token found.")
    assert "hf auth login" in lines[0]
    assert not out.exists() and fake_hub.repos == []


def test_hub_private_needs_push_to_hub(merge_inputs, tmp_path):
    out = tmp_path / "merged"
    result, text = invoke("ties", "--base-model", merge_inputs["base"], "--model", merge_inputs["adapter_a"],
                          "--model", merge_inputs["adapter_b"], "-o", out, "--hub-private")
    assert result.exit_code == 1 and "--hub-private only applies with --push-to-hub" in text and not out.exists()

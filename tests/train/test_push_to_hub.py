"""`pgm train --push-to-hub`: what is uploaded (one commit, only pgm's files, the card), when (only
after a run that fully succeeded), and how it fails (before training without a token or offline;
after it, keeping the run, which `--resume` pushes without training again). The hub is a local
stand-in (tests/hub/fake.py); everything else is the real loop on the tiny model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace

import pytest

from paligemma_cli.config import build_run, train_command
from paligemma_cli.errors import PgmError
from paligemma_cli.events import Events
from paligemma_cli.train.loop import train
from tests.hub.fake import assert_no_token_anywhere, fake_hub  # noqa: F401  (a fixture)
from tests.train.test_trackers import Recorder

pytestmark = pytest.mark.slow
REPO = "someone/paligemma-vqav2-test"
PROCESSOR_PREFIXES = ("processor", "tokenizer", "preprocessor", "special_tokens", "chat_template")


def _run(data_root, out, **over):
    values = dict(task="vqav2", model_path="tiny", data_root=str(data_root), output_dir=str(out), batch_size=2,
                  gradient_accumulation_steps=1, max_steps=2, logging_steps=1, learning_rate=1e-3,
                  max_eval_samples=4, push_to_hub=REPO)
    values.update(over)
    return build_run(values)


def python_block(card: str) -> str:
    return re.search(r"```python\n(.*?)\n```", card, re.S).group(1)


def test_pushes_only_pgm_files_and_the_card_in_one_commit(tmp_path, fake_hub, capfd, synthetic_data,
                                                          tiny_model_dir):
    root = synthetic_data("vqav2")
    out = tmp_path / "run"
    run = _run(root, out, eval_steps=1, save_steps=1, report_to="tensorboard", hub_private=True)
    result = train(run)

    assert fake_hub.repos == [{"repo_id": REPO, "private": True, "exist_ok": True}]
    assert len(fake_hub.commits) == 1 and result.hub_url == f"https://huggingface.co/{REPO}/commit/{1:040x}"
    files = fake_hub.commits[0]["files"]
    processor = {p.name for p in out.iterdir() if p.name.startswith(PROCESSOR_PREFIXES)}
    assert processor and set(files) == {"adapter_config.json", "adapter_model.safetensors", "README.md",
                                        "run_config.json", "train_log.jsonl", "loss.png"} | processor
    assert all(files[name] == (out / name).read_bytes() for name in files)  # the card stays in the folder too
    for kept_out in ("checkpoints", "best", "tensorboard", ".pgm-run.json"):
        assert (out / kept_out).exists(), kept_out

    card = fake_hub.card
    meta = card.split("---\n")[1]
    assert "library_name: peft" in meta and "pipeline_tag: image-text-to-text" in meta and "- vqav2" in meta
    assert "base_model" not in meta  # 'tiny' is a local folder: no hub model to link
    assert "More Information Needed" not in card  # PEFT's stub README is replaced
    assert "VQAv2" in card and "`answer en what is in the picture?`" in card
    assert "| LoRA | rank 16, alpha 32, dropout 0.05, on language |" in card
    assert "learning rate 0.001" in card and "| steps | 2 (--max-steps) |" in card
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in log if "eval" in r]
    assert [e["step"] for e in evals] == [1, 2]
    for e in evals:
        assert f"| {e['step']} | {e['accuracy']:.4g} |" in card
    best = max(evals, key=lambda e: e["accuracy"])
    assert f"Best accuracy: {best['accuracy']:.4g} at step {best['step']}." in card
    assert f'PeftModel.from_pretrained(base, "{REPO}")' in card
    assert train_command(run.to_dict()) in card and "--push-to-hub " + REPO in card
    assert_no_token_anywhere(fake_hub, "".join(capfd.readouterr()), out)

    # The card's loading code runs as written with plain transformers + peft (the repo id
    # pointed at the local folder, a synthetic image in place of image.jpg).
    image = next((root / "val2014").iterdir())
    script = tmp_path / "card_usage.py"
    script.write_text(python_block(card).replace(json.dumps(REPO), json.dumps(str(out)))
                      .replace('"image.jpg"', json.dumps(str(image))))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_failed_push_keeps_the_run_and_resume_pushes_it_without_training(tmp_path, fake_hub, synthetic_data,
                                                                         tiny_model_dir):
    import httpx2

    out = tmp_path / "run"
    run = _run(synthetic_data("vqav2"), out, eval_steps=3)  # the one evaluation is the last step's
    fake_hub.fail = httpx2.ConnectError("no route to host")
    with pytest.raises(PgmError) as exc:
        train(run)
    assert REPO in exc.value.message and "could not be reached (ConnectError)" in exc.value.message
    assert f"the results in {out} are kept" in exc.value.message and "--resume" in exc.value.hint
    log, weights = (out / "train_log.jsonl").read_text(), (out / "adapter_model.safetensors").read_bytes()
    assert '"eval"' in log
    assert fake_hub.commits == []

    fake_hub.fail = None
    result = train(replace(run, train=replace(run.train, resume=True)))
    assert result.global_step == 2 and len(fake_hub.commits) == 1
    assert (out / "train_log.jsonl").read_text() == log  # no step and no evaluation ran again
    assert (out / "adapter_model.safetensors").read_bytes() == weights
    assert fake_hub.commits[0]["files"]["adapter_model.safetensors"] == weights


class StopAtFirstStep(Events):
    def train_step(self, step, metrics):
        if step == 1:  # what Ctrl-C does: the loop checkpoints and stops
            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_run_pushes_nothing(tmp_path, fake_hub, synthetic_data, tiny_model_dir):
    result = train(_run(synthetic_data("vqav2"), tmp_path / "run", max_steps=4), StopAtFirstStep())
    assert result.interrupted and result.global_step < 4
    assert fake_hub.repos == [] and fake_hub.commits == [] and result.hub_url is None


@pytest.mark.parametrize("problem", ["no token", "offline", "bad repo id"])
def test_push_problems_stop_before_any_data_or_model_loads(problem, tmp_path, fake_hub, monkeypatch,
                                                          synthetic_data):
    repo = REPO
    if problem == "no token":
        monkeypatch.delenv("HF_TOKEN")
    elif problem == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        repo = "someone/with space"
    out = tmp_path / "run"
    events = Recorder()
    with pytest.raises(PgmError) as exc:
        train(_run(synthetic_data("vqav2"), out, push_to_hub=repo), events)
    assert repr(repo) in exc.value.message or repo in exc.value.message
    expected = {"no token": ("no Hugging Face token", "hf auth login"),
                "offline": ("HF_HUB_OFFLINE", "Unset it"),
                "bad repo id": ("is not a Hugging Face repo id", "user/name")}[problem]
    assert expected[0] in exc.value.message and expected[1] in exc.value.hint
    assert events.phases == [] and not out.exists()  # nothing read, loaded or written
    assert fake_hub.repos == []


def test_cli_without_a_token_is_one_line_and_never_shows_a_token(tmp_path, synthetic_data):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE",
                                                          "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), COLUMNS="200")  # an empty home: no token file
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "paligemma_cli", "train", "vqav2", "--model-path", "tiny",
                           "--data-root", str(synthetic_data("vqav2")), "--output-dir", str(out),
                           "--push-to-hub", REPO], capture_output=True, text=True, env=env, timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: --push-to-hub {REPO}: no Hugging Face token"), text
    assert not out.exists()

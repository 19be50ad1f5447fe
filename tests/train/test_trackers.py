"""--report-to tensorboard: the event files hold exactly train_log.jsonl's numbers, read back with
tensorboard's own EventAccumulator; --overwrite removes them as pgm's; a missing package stops the
run before any data or model loads."""

from __future__ import annotations

import json
import sys

import pytest

from paligemma_cli.config import build_run
from paligemma_cli.errors import PgmError
from paligemma_cli.events import Events
from paligemma_cli.train.loop import train

pytestmark = pytest.mark.slow


def _run(data_root, out, **over):
    values = dict(task="gqa", model_path="tiny", data_root=str(data_root), output_dir=str(out), batch_size=2,
                  gradient_accumulation_steps=2, max_steps=4, logging_steps=1, eval_steps=2, max_eval_samples=4,
                  report_to="tensorboard")
    values.update(over)
    return build_run(values)


def read_events(folder) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard shows them (purged points hidden)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_from_log(out) -> dict[str, list[tuple[int, float]]]:
    """What the event files must hold: every number of every train_log.jsonl line, at its step."""
    want: dict[str, list[tuple[int, float]]] = {}
    for line in (out / "train_log.jsonl").read_text().splitlines():
        record = json.loads(line)
        prefix, values = ("eval", record["eval"]) if "eval" in record else ("train", record)
        for key, value in values.items():
            if key != "step":
                want.setdefault(f"{prefix}/{key}", []).append((record["step"], value))
    return want


def assert_events_match_log(out) -> None:
    got, want = read_events(out / "tensorboard"), expected_from_log(out)
    assert sorted(got) == sorted(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        # event files store float32
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-12), tag


def test_tensorboard_events_are_train_log_jsonl(tmp_path, synthetic_data, tiny_model_dir):
    out = tmp_path / "run"
    train(_run(synthetic_data("gqa"), out))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "eval" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    # the gradient norm as the clip returns it (before clipping), in both logs
    assert all(r["grad_norm"] > 0 for r in steps)
    assert [r["step"] for r in log if "eval" in r] == [2, 4]
    got = read_events(out / "tensorboard")
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/padded_fraction",
                "eval/accuracy", "eval/consistency"):
        assert tag in got, tag
    assert_events_match_log(out)
    assert "tensorboard" in json.loads((out / ".pgm-run.json").read_text())["written"]

    # --overwrite removes the earlier run's event files (pgm wrote them); without clipping no
    # gradient norm is computed, so neither log has one.
    first = sorted(p.name for p in (out / "tensorboard").iterdir())
    train(_run(synthetic_data("gqa"), out, overwrite=True, max_grad_norm=0, max_steps=2))
    assert not set(first) & {p.name for p in (out / "tensorboard").iterdir()}
    assert "grad_norm" not in (out / "train_log.jsonl").read_text()
    assert "train/grad_norm" not in read_events(out / "tensorboard")
    assert_events_match_log(out)


class Recorder(Events):
    """Records the start-up phases a run reached (none: nothing was read or loaded)."""

    def __init__(self):
        self.phases = []

    def phase_start(self, description, total=None):
        self.phases.append(description)


def test_missing_tensorboard_is_one_error_with_the_pip_command_before_anything_loads(tmp_path, monkeypatch,
                                                                                   synthetic_data):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what an environment without it imports
    out = tmp_path / "run"
    events = Recorder()
    with pytest.raises(PgmError) as exc:
        train(_run(synthetic_data("gqa"), out), events)
    assert exc.value.message == "--report-to tensorboard needs the tensorboard package, which is not installed."
    assert exc.value.hint == "Install it: pip install 'paligemma-cli[tensorboard]'"
    assert events.phases == [] and not out.exists()

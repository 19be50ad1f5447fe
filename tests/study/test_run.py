"""A study on two trained tiny experts: in-memory merges score exactly as written ones, and a
killed or extended study runs only the cells it lacks."""

import csv
import json

import pytest
import yaml

from paligemma_cli.config import DataConfig, ModelConfig
from paligemma_cli.events import Events
from paligemma_cli.outputs import claim_output
from paligemma_cli.study.run import StudyRun
from paligemma_cli.study.spec import read_study


class Cells(Events):
    def __init__(self):
        self.cells = []

    def study_cell(self, done, total, label, score, seconds):
        self.cells.append((label, score))


def _study(tmp_path, experts, grid, **over):
    spec = {"base_model": "tiny", "max_eval_samples": 12, "batch_size": 12,
            "experts": {t: {"path": str(a), "data_root": str(d)} for t, (a, d) in experts.items()},
            "grid": grid, **over}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return read_study(path)


def _run(study, out, resume=False, **kw):
    from paligemma_cli.model.load import resolve_model_path

    events = Cells()
    with claim_output(out, "study", resume=resume) as output:
        cells = StudyRun(study, output, resolve_model_path("tiny"), events=events, **kw).run()
    return cells, events.cells


def test_a_study_cell_scores_what_pgm_merge_then_pgm_eval_scores(tmp_path, trained_experts):
    """Same quantisation (pgm eval's default, 4-bit NF4) on both sides; the merge is written by
    pgm merge's driver and evaluated by pgm eval's run_evaluation, as the two commands do."""
    from paligemma_cli.infer.evaluate import evaluated, run_evaluation
    from paligemma_cli.merge.driver import merge
    from paligemma_cli.merge.request import MergeRequest
    from paligemma_cli.model.load import resolve_model_path
    from paligemma_cli.tasks import get_task

    study = _study(tmp_path, trained_experts, [{"method": "ties", "density": 0.5}])
    cells, shown = _run(study, tmp_path / "study", save_merges=True)
    assert len(cells) == 4 * 2 and len(shown) == 8  # (base, 2 experts, 1 merge) x 2 tasks
    scores = {(c.model, c.task): c.score for c in cells}
    assert scores["expert vqav2", "vqav2"] > scores["base", "vqav2"]  # the experts learned something

    written = tmp_path / "merged"
    merge(MergeRequest(base_model=resolve_model_path("tiny"), models=tuple(str(a) for a, _ in trained_experts.values()),
                       mode="ties", density=0.5, output=written))
    for task, (_, data) in trained_experts.items():
        t = get_task(task)
        result = run_evaluation(t, DataConfig(task=task, data_root=data, max_eval_samples=12),
                                model_cfg=ModelConfig(model_path=str(written)), batch_size=12)
        assert scores["ties density=0.5", task] == t.headline_0_100(result.metrics)
    # pgm eval's metrics.json says which merge it evaluated
    info = evaluated(t, DataConfig(task=task, data_root=data), model_cfg=ModelConfig(model_path=str(written)))
    recipe = json.loads((written / "pgm_merge.json").read_text())
    assert info["evaluated"]["merge_recipe"] == recipe and recipe["mode"] == "ties"
    # --save-merges wrote the same model pgm merge writes
    saved = tmp_path / "study" / "merges" / "ties_density=0.5" / "model.safetensors"
    assert saved.read_bytes() == (written / "model.safetensors").read_bytes()
    rows = list(csv.DictReader((tmp_path / "study" / "results.csv").open()))
    merged = next(r for r in rows if r["model"] == "ties density=0.5" and r["task"] == "vqav2")
    assert float(merged["normalized"]) == pytest.approx(float(merged["score"]) / float(merged["expert_score"]), abs=1e-4)
    report = (tmp_path / "study" / "report.md").read_text()
    assert "| base |" in report and "| ties density=0.5 |" in report


def test_an_extended_study_runs_only_the_new_cells(tmp_path, trained_experts):
    out = tmp_path / "study"
    grid = [{"method": "task_arithmetic", "lambda": 0.5}]
    first, _ = _run(_study(tmp_path, trained_experts, grid, quantization="none"), out)
    before = (out / "results.csv").read_text()
    grid.append({"method": "task_arithmetic", "lambda": [0.5, 1.0]})
    cells, shown = _run(_study(tmp_path, trained_experts, grid, quantization="none"), out, resume=True)
    assert [label for label, _ in shown] == ["task_arithmetic lambda=1.0 on vqav2", "task_arithmetic lambda=1.0 on gqa"]
    assert cells[:len(first)] == first
    assert (out / "results.csv").read_text().startswith(before)
    assert (out / "normalized.png").read_bytes().startswith(b"\x89PNG")  # lambda now takes two values


def test_an_interrupted_study_keeps_its_finished_cells_and_continues(tmp_path, trained_experts):
    from paligemma_cli.model.load import resolve_model_path

    class Stop(Cells):
        def study_cell(self, done, total, label, score, seconds):
            super().study_cell(done, total, label, score, seconds)
            if done == 3:
                raise KeyboardInterrupt

    study = _study(tmp_path, trained_experts, [{"method": "linear"}], quantization="none")
    out = tmp_path / "study"
    with pytest.raises(KeyboardInterrupt):
        with claim_output(out, "study") as output:
            StudyRun(study, output, resolve_model_path("tiny"), events=Stop()).run()
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 3
    cells, shown = _run(study, out, resume=True)
    assert len(shown) == 5 and len(cells) == 8
    assert shown[0][0] == "expert vqav2 on gqa"


def test_a_regmean_cell_calibrates_each_expert_on_its_task_and_scores_as_pgm_merge_regmean(tmp_path, trained_experts):
    from paligemma_cli.infer.evaluate import run_evaluation
    from paligemma_cli.merge.driver import merge
    from paligemma_cli.merge.request import MergeRequest
    from paligemma_cli.model.load import resolve_model_path
    from paligemma_cli.tasks import get_task

    study = _study(tmp_path, trained_experts, [{"method": "regmean", "calibration_samples": 8}], quantization="none")
    cells, _ = _run(study, tmp_path / "study")
    scores = {(c.model, c.task): c.score for c in cells}
    written = tmp_path / "merged"
    merge(MergeRequest(base_model=resolve_model_path("tiny"), models=tuple(str(a) for a, _ in trained_experts.values()),
                       mode="regmean", calibrate=tuple(f"{t}={d}" for t, (_, d) in trained_experts.items()),
                       calibration_samples=8, output=written))
    for task, (_, data) in trained_experts.items():
        t = get_task(task)
        result = run_evaluation(t, DataConfig(task=task, data_root=data, max_eval_samples=12), batch_size=12,
                                model_cfg=ModelConfig(model_path=str(written), quantization="none"))
        assert scores["regmean calibration_samples=8", task] == t.headline_0_100(result.metrics)


def test_a_study_with_other_settings_does_not_continue_in_the_same_folder(tmp_path, trained_experts):
    from paligemma_cli.errors import PgmError
    from paligemma_cli.study.run import check_continues

    study = _study(tmp_path, trained_experts, [{"method": "linear"}], quantization="none")
    out = tmp_path / "study"
    _run(study, out)
    check_continues(study, out)  # the same settings: fine
    other = _study(tmp_path, trained_experts, [{"method": "linear"}], quantization="none", max_eval_samples=6)
    with pytest.raises(PgmError, match=r"another max_eval_samples \(12, now 6\)"):
        check_continues(other, out)

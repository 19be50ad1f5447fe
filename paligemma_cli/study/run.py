"""Run a study: the base, each expert and each grid point's merge, each evaluated on every task.

The base model's files are read once per merge, never written: a merge is computed in memory
(merge.driver.prepare + merge.tensors.merged_state_dict, the code `pgm merge` writes from) and
loaded with the same `from_pretrained` call, quantisation and dtype as `pgm eval --model-path`
on the written merge, so a cell's score is the one that pair of commands gives. Each model loads
once and is evaluated on every task that still needs it; each task's examples and scorer inputs
are read once. results.csv is rewritten after every cell, so a killed or extended study skips the
cells it holds. A cell records only its task's headline metric, so only that is computed (for COCO,
CIDEr without METEOR's and SPICE's Java runs; same value as `pgm eval`'s).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from paligemma_cli.config import DataConfig, ModelConfig
from paligemma_cli.events import Events
from paligemma_cli.outputs import Output
from paligemma_cli.study.report import BASE, EXPERT, CellResult, plot_png, read_results, report_md, results_csv
from paligemma_cli.study.spec import Expert, GridPoint, Study, merge_request

RESULTS, REPORT, PLOT, MERGES, SETTINGS = "results.csv", "report.md", "normalized.png", "merges", "study.json"


def settings(study: Study) -> dict[str, Any]:
    """What a cell's score depends on besides its model and task: a study continued in the same
    folder must have the same (else its old and new cells would not be comparable)."""
    return {"base_model": study.base_model, "quantization": study.quantization, "compute_dtype": study.compute_dtype,
            "max_eval_samples": study.max_eval_samples, "max_new_tokens": study.max_new_tokens,
            "experts": {e.name: {"task": e.task, "path": str(e.path), "data_root": str(e.data_root)}
                        for e in study.experts}}


def check_continues(study: Study, folder: Path) -> None:
    """Refuse to continue an earlier study in `folder` whose settings differ (one line, the first difference)."""
    import json

    from paligemma_cli.errors import PgmError

    try:
        earlier = json.loads((Path(folder) / SETTINGS).read_text())
    except (OSError, ValueError):
        return
    now = json.loads(json.dumps(settings(study)))
    for key in now:
        if earlier.get(key) != now[key]:
            raise PgmError(f"--output {folder} holds a study with another {key} ({earlier.get(key)!r}, now "
                           f"{now[key]!r}), so its cells would not compare.",
                           "Use another --output, or --overwrite to start over.")


@dataclass(frozen=True)
class Row:
    """One model of the study."""

    label: str
    method: str  # base, expert, or a merge method
    params: tuple[tuple[str, Any], ...] = ()
    expert: Expert | None = None
    point: GridPoint | None = None


def study_rows(study: Study) -> list[Row]:
    rows = [Row(BASE, BASE)]
    rows += [Row(f"{EXPERT} {e.name}", EXPERT, expert=e) for e in study.experts]
    rows += [Row(p.label, p.method, p.params, point=p) for p in study.grid]
    return rows


def expert_models(study: Study) -> dict[str, str]:
    return {e.task: f"{EXPERT} {e.name}" for e in study.experts}


class StudyRun:
    """One `pgm study` into a claimed output folder."""

    def __init__(self, study: Study, output: Output, base_folder: str, *, events: Events | None = None,
                 save_merges: bool = False):
        self.study, self.output, self.base_folder = study, output, base_folder
        self.events = events or Events()
        self.save_merges = save_merges
        wanted = {(r.label, t) for r in study_rows(study) for t in study.tasks}
        # cells of an earlier run of this study (killed, or with a smaller grid) are kept and skipped
        self.cells = [c for c in read_results(output.path / RESULTS) if (c.model, c.task) in wanted]

    def model_config(self, path: str) -> ModelConfig:
        return ModelConfig(model_path=path, quantization=self.study.quantization,
                           compute_dtype=self.study.compute_dtype)

    def todo(self) -> list[tuple[Row, list[str]]]:
        done = {(c.model, c.task) for c in self.cells}
        rows = [(r, [t for t in self.study.tasks if (r.label, t) not in done]) for r in study_rows(self.study)]
        return [(r, tasks) for r, tasks in rows if tasks]

    def run(self) -> list[CellResult]:
        from paligemma_cli.infer.evaluate import eval_inputs
        from paligemma_cli.model.load import load_processor
        from paligemma_cli.tasks import get_task

        todo = self.todo()
        total = len(study_rows(self.study)) * len(self.study.tasks)
        if not todo:
            self.write_report()
            return self.cells
        import json

        self.output.write(SETTINGS, json.dumps(settings(self.study), indent=2))
        self.events.message(f"{total - sum(len(t) for _, t in todo)} of {total} cells already done in "
                            f"{self.output.path}; running the other {sum(len(t) for _, t in todo)}.")
        needed = {t for _, tasks in todo for t in tasks}
        inputs = {}
        for task in self.study.tasks:
            if task in needed:
                data = DataConfig(task=task, data_root=self.study.expert_for(task).data_root,
                                  max_eval_samples=self.study.max_eval_samples)
                inputs[task] = eval_inputs(get_task(task), data, events=self.events)
        processor = load_processor(self.base_folder)
        for row, tasks in todo:
            started = time.perf_counter()
            model = self.load(row)
            for task in tasks:
                self.evaluate(row, get_task(task), model, processor, inputs[task], total, started)
                started = time.perf_counter()
            del model
            gc.collect()
        self.write_report()
        return self.cells

    def load(self, row: Row):
        from paligemma_cli.model.load import load_for_inference, load_model

        if row.method == BASE:
            return load_model(self.model_config(self.base_folder), for_training=False)
        if row.expert is not None:
            path = row.expert.path
            if (path / "adapter_config.json").is_file():
                return load_for_inference(self.model_config(self.base_folder), path)
            return load_for_inference(self.model_config(str(path)))
        return self.load_merge(row.point)

    def load_merge(self, point: GridPoint):
        import tempfile

        from paligemma_cli.merge.driver import add_side_inputs, merge, prepare
        from paligemma_cli.merge.tensors import merged_state_dict
        from paligemma_cli.model.load import load_model

        req = merge_request(self.study, point, self.base_folder)
        job = prepare(req)
        if self.save_merges:
            self.output.record(MERGES)
            folder = self.output.path / MERGES / point.label.replace(" ", "_")
            if not folder.exists():
                merge(replace(req, output=folder))
        with tempfile.TemporaryDirectory(prefix="pgm-grams-") as workdir:  # RegMean: each expert on its task
            add_side_inputs(req, job, Path(self.base_folder), Path(workdir), self.events)
            state, _ = merged_state_dict(job)
        model = load_model(self.model_config(self.base_folder), for_training=False, state_dict=state)
        del state
        model.eval()
        return model

    def evaluate(self, row: Row, task, model, processor, inputs, total: int, started: float) -> None:
        from paligemma_cli.infer.evaluate import evaluate_model

        examples, extra = inputs
        result = evaluate_model(task, model, processor, examples,
                                max_new_tokens=self.study.max_new_tokens or task.max_new_tokens,
                                batch_size=self.study.batch_size, extra={**extra, "headline_only": True},
                                events=self.events)
        score = task.headline_0_100(result.metrics)
        cell = CellResult(row.label, row.method, row.params, task.name, task.headline,
                          float("nan") if score is None else score)
        self.cells.append(cell)
        self.output.write(RESULTS, results_csv(self.cells, self.study.param_names, expert_models(self.study)))
        self.output.keep()  # a killed study keeps its finished cells
        self.events.study_cell(len(self.cells), total, f"{row.label} on {task.name}", cell.score,
                               time.perf_counter() - started)

    def write_report(self) -> None:
        tasks, experts = self.study.tasks, expert_models(self.study)
        order = {(r.label, t): i for i, (r, t) in enumerate((r, t) for r in study_rows(self.study)
                                                            for t in self.study.tasks)}
        self.cells.sort(key=lambda c: order[c.model, c.task])
        self.output.write(RESULTS, results_csv(self.cells, self.study.param_names, experts))
        self.output.write(REPORT, report_md(self.cells, tasks, experts))
        png = plot_png(self.cells, tasks, experts)
        if png is not None:
            self.output.write(PLOT, png)

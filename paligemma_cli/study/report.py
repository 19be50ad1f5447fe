"""A study's results: results.csv (one row per model x task), report.md and the plot.

Scores are the task's headline metric on the 0-100 scale papers use (VQA and GQA accuracy as they
are, ANLS and CIDEr x 100). `normalized` is a score divided by the expert's score on that task,
the normalised score of the merging literature (1.0: the merge keeps all of the expert's score).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

BASE, EXPERT = "base", "expert"


@dataclass(frozen=True)
class CellResult:
    """One model evaluated on one task."""

    model: str  # "base", "expert vqav2", "ties density=0.3"
    method: str  # "base", "expert", or the merge method
    params: tuple[tuple[str, object], ...]
    task: str
    metric: str
    score: float  # 0-100


def expert_scores(cells: list[CellResult], experts: dict[str, str]) -> dict[str, float]:
    """task -> its expert's score on it; `experts` maps each task to its expert's model name."""
    return {c.task: c.score for c in cells if experts.get(c.task) == c.model}


def normalized(score: float, expert: float | None) -> float | None:
    if expert is None or expert == 0:
        return None
    return score / expert


def results_csv(cells: list[CellResult], param_names: list[str], expert_models: dict[str, str]) -> str:
    experts = expert_scores(cells, expert_models)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["model", "method", *param_names, "task", "metric", "score", "expert_score", "normalized"])
    for c in cells:
        params = dict(c.params)
        norm = normalized(c.score, experts.get(c.task))
        writer.writerow([c.model, c.method, *(params.get(p, "") for p in param_names), c.task, c.metric,
                         repr(c.score), _fmt(experts.get(c.task), 4), _fmt(norm, 4)])  # score: exact, read back on resume
    return out.getvalue()


def read_results(path: Path) -> list[CellResult]:
    """The cells a results.csv holds (an earlier, killed or smaller run of the study)."""
    if not path.is_file():
        return []
    cells = []
    for row in csv.DictReader(path.read_text().splitlines()):
        fixed = {"model", "method", "task", "metric", "score", "expert_score", "normalized"}
        params = tuple((k, _number(v)) for k, v in row.items() if k not in fixed and v not in ("", None))
        cells.append(CellResult(row["model"], row["method"], params, row["task"], row["metric"], float(row["score"])))
    return cells


def _number(text: str):
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def report_md(cells: list[CellResult], tasks: list[str], expert_models: dict[str, str], *,
              title: str = "Merging study") -> str:
    """The base's zero-shot row and the expert x task matrix first, then one row per merge."""
    experts = expert_scores(cells, expert_models)
    by_model: dict[str, dict[str, CellResult]] = {}
    for c in cells:
        by_model.setdefault(c.model, {})[c.task] = c
    lines = [f"# {title}", "",
             "Scores are each task's headline metric on the 0-100 scale papers use (VQA and GQA accuracy; "
             "ANLS and CIDEr x 100); in brackets the normalised score, score / the task expert's score.", "",
             "| model | " + " | ".join(tasks) + " | mean normalised |",
             "|---|" + "---:|" * (len(tasks) + 1)]
    kind = {c.model: c.method for c in cells}
    order = sorted(by_model, key=lambda m: (0 if kind[m] == BASE else 1 if kind[m] == EXPERT else 2))
    for model in order:
        row, norms = by_model[model], []
        shown = []
        for task in tasks:
            cell = row.get(task)
            if cell is None:
                shown.append("")
                continue
            norm = normalized(cell.score, experts.get(task))
            norms.append(norm)
            shown.append(f"{cell.score:.2f}" + ("" if norm is None else f" ({norm:.3f})"))
        mean = fmean(norms) if norms and None not in norms and len(norms) == len(tasks) else None
        lines.append(f"| {model} | " + " | ".join(shown) + f" | {_fmt(mean, 3)} |")
    lines.append("")
    metrics = {c.task: c.metric for c in cells}
    lines.append("Metrics: " + ", ".join(f"{t} {metrics[t]}" for t in tasks if t in metrics) + ".")
    return "\n".join(lines) + "\n"


def plot_png(cells: list[CellResult], tasks: list[str], expert_models: dict[str, str]) -> bytes | None:
    """Normalised score per task against each swept parameter, one panel per (method, parameter);
    where a method sweeps several parameters, each point is the mean over the others' values.
    None when no parameter takes two values."""
    experts = expert_scores(cells, expert_models)
    panels: dict[tuple[str, str], dict[str, dict[float, list[float]]]] = {}
    merges = [c for c in cells if c.method not in (BASE, EXPERT)]
    for method in dict.fromkeys(c.method for c in merges):
        mine = [c for c in merges if c.method == method]
        for name in dict.fromkeys(k for c in mine for k, _ in c.params):
            if len({dict(c.params).get(name) for c in mine}) < 2:
                continue
            panel = panels.setdefault((method, name), {})
            for c in mine:
                norm = normalized(c.score, experts.get(c.task))
                if norm is not None and name in dict(c.params):
                    panel.setdefault(c.task, {}).setdefault(float(dict(c.params)[name]), []).append(norm)
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), dpi=100, squeeze=False)
    for ax, ((method, name), per_task) in zip(axes[0], panels.items()):
        for task in tasks:
            points = sorted(per_task.get(task, {}).items())
            if points:
                ax.plot([x for x, _ in points], [fmean(v) for _, v in points], marker="o", lw=1.5, label=task)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_title(method)
        ax.set_xlabel(name)
        ax.set_ylabel("normalised score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return png.getvalue()

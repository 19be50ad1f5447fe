"""results.csv, report.md and the plot from hand-made cells (no model)."""

import csv
import io

import pytest

from paligemma_cli.study.report import CellResult, plot_png, read_results, report_md, results_csv

EXPERTS = {"vqav2": "expert vqav2", "gqa": "expert gqa"}


def cells():
    return [CellResult("base", "base", (), "vqav2", "accuracy", 10.0),
            CellResult("base", "base", (), "gqa", "accuracy", 5.0),
            CellResult("expert vqav2", "expert", (), "vqav2", "accuracy", 80.0),
            CellResult("expert vqav2", "expert", (), "gqa", "accuracy", 20.0),
            CellResult("expert gqa", "expert", (), "vqav2", "accuracy", 30.0),
            CellResult("expert gqa", "expert", (), "gqa", "accuracy", 50.0),
            CellResult("ties density=0.3", "ties", (("density", 0.3),), "vqav2", "accuracy", 60.0),
            CellResult("ties density=0.3", "ties", (("density", 0.3),), "gqa", "accuracy", 40.0),
            CellResult("ties density=0.5", "ties", (("density", 0.5),), "vqav2", "accuracy", 40.0),
            CellResult("ties density=0.5", "ties", (("density", 0.5),), "gqa", "accuracy", 45.0),
            CellResult("task_arithmetic lambda=1", "task_arithmetic", (("lambda", 1),), "vqav2", "accuracy", 20.0)]


def test_results_csv_normalises_by_the_task_experts_score():
    rows = list(csv.DictReader(io.StringIO(results_csv(cells(), ["density", "lambda"], EXPERTS))))
    assert list(rows[0]) == ["model", "method", "density", "lambda", "task", "metric", "score",
                             "expert_score", "normalized"]
    ties = {r["task"]: r for r in rows if r["model"] == "ties density=0.3"}
    assert ties["vqav2"]["score"] == "60.0" and ties["vqav2"]["expert_score"] == "80.0000" and ties["vqav2"]["normalized"] == "0.7500"
    assert ties["gqa"]["normalized"] == "0.8000" and ties["gqa"]["density"] == "0.3"
    assert ties["gqa"]["lambda"] == ""
    # the other expert on a task is normalised by that task's expert, not by itself
    cross = next(r for r in rows if r["model"] == "expert gqa" and r["task"] == "vqav2")
    assert cross["normalized"] == "0.3750"


def test_results_csv_reads_back_to_the_same_cells(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(results_csv(cells(), ["density", "lambda"], EXPERTS))
    assert read_results(path) == cells()
    assert read_results(tmp_path / "missing.csv") == []


def test_report_puts_base_and_experts_first_and_means_the_normalised_scores():
    shuffled = cells()[6:] + cells()[:6]
    text = report_md(shuffled, ["vqav2", "gqa"], EXPERTS)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0] == "| model | vqav2 | gqa | mean normalised |"
    assert [line.split(" | ")[0] for line in table[1:]] == [
        "| base", "| expert vqav2", "| expert gqa", "| ties density=0.3", "| ties density=0.5",
        "| task_arithmetic lambda=1"]
    assert "| ties density=0.3 | 60.00 (0.750) | 40.00 (0.800) | 0.775 |" in table
    assert "| expert vqav2 | 80.00 (1.000) | 20.00 (0.400) | 0.700 |" in table
    # a merge missing a task has no mean
    assert table[-1] == "| task_arithmetic lambda=1 | 20.00 (0.250) |  |  |"
    assert "0-100 scale" in text


def test_plot_has_a_panel_per_swept_parameter_only():
    png = plot_png(cells(), ["vqav2", "gqa"], EXPERTS)
    assert png is not None and png.startswith(b"\x89PNG")
    assert plot_png([c for c in cells() if c.method != "ties"], ["vqav2", "gqa"], EXPERTS) is None


@pytest.mark.parametrize("value,expected", [("0.3", 0.3), ("2", 2), ("1.0", 1.0)])
def test_parameter_values_keep_their_type(tmp_path, value, expected):
    path = tmp_path / "results.csv"
    path.write_text("model,method,density,task,metric,score,expert_score,normalized\n"
                    f"m,ties,{value},vqav2,accuracy,1.0,,\n")
    (cell,) = read_results(path)
    assert cell.params == (("density", expected),) and type(cell.params[0][1]) is type(expected)

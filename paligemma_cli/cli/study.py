"""`pgm study`: STUDY.yaml (+ flags) -> study.run.StudyRun -> the report's table. No logic here."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from paligemma_cli.cli._ui import console, quiet_libraries
from paligemma_cli.cli.progress import RichEvents

HELP = """Merge task experts over a grid in memory, evaluate every merge on every task, report.

STUDY.yaml names the base model, one expert per task (a pgm train output or a full-model folder, and that task's data root) and a grid of merge methods with lists of their parameters:

  base_model: google/paligemma-3b-pt-448
  experts:
    vqav2: {path: runs/vqav2, data_root: /data/vqav2}
    gqa:   {path: runs/gqa, data_root: /data/gqa}      # task: the name, or a task: key
  max_eval_samples: 500
  grid:
    - {method: ties, density: [0.2, 0.3, 0.5]}
    - {method: task_arithmetic, lambda: [0.3, 0.5, 1.0]}
    - {method: tsv}

Other keys: quantization (default 4bit, as pgm eval), compute_dtype, batch_size, max_new_tokens. Grid parameters: density, lambda, gamma, epsilon, common_fraction, normalize, seed, regmean_alpha, calibration_samples (as pgm merge's flags; regmean calibrates each expert on its own data_root). Flags override the file's keys.

The base loads once per merge and no merge is written (--save-merges writes each as pgm merge would); a cell's score equals pgm merge followed by pgm eval --model-path with the same quantisation. OUTPUT gets study.json (the settings a continued study must keep), results.csv (one row per model x task: score, expert_score, normalized = score / expert_score), report.md (the base's zero-shot row, the expert x task matrix, one row per merge, mean normalised score; each task's headline metric on the 0-100 scale papers use; only it is computed, so COCO cells skip METEOR's and SPICE's Java) and normalized.png (normalised score against each swept parameter).

Run the same command again to continue a killed study or one whose grid grew: the cells in results.csv are skipped. --overwrite starts over.

Example:

  pgm study study.yaml -o studies/vqa-gqa --max-eval-samples 200
"""


class StudyEvents(RichEvents):
    """Progress bars for loading and generating; one line per finished cell, not per metric."""

    def eval_end(self, metrics) -> None:
        self.progress.remove_task(self.eval_task)

    def study_cell(self, done: int, total: int, label: str, score: float, seconds: float) -> None:
        console.print(Text.assemble((f"[{done}/{total}]", "cyan"), f" {label}: {score:.2f}",
                                    (f"  {seconds:.1f} s", "dim")), highlight=False)


def study(
    study_file: Path = typer.Argument(..., metavar="STUDY.yaml", help="The study's YAML file (shape above).",
                                      show_default=False),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for results.csv, report.md and the plot."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Overrides base_model."),
    max_eval_samples: Optional[int] = typer.Option(None, "--max-eval-samples", min=1,
                                                   help="Overrides max_eval_samples (examples per task)."),
    quantization: Optional[str] = typer.Option(None, "--quantization", help="Overrides quantization: 4bit, 8bit "
                                               "or none."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Overrides batch_size."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Overrides max_new_tokens."),
    save_merges: bool = typer.Option(False, "--save-merges", help="Also write each merge to OUTPUT/merges/ "
                                     "as pgm merge would."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over: replace an earlier pgm study in OUTPUT "
                                   "(without it, the study continues where it stopped)."),
) -> None:
    from paligemma_cli.outputs import check_output, claim_output, read_marker
    from paligemma_cli.study.spec import check_study, read_study

    spec = read_study(study_file, {"base_model": base_model, "max_eval_samples": max_eval_samples,
                                   "quantization": quantization, "batch_size": batch_size,
                                   "max_new_tokens": max_new_tokens})
    # an earlier (killed, or smaller) study in OUTPUT is continued unless --overwrite
    resume = not overwrite and (read_marker(output) or {}).get("kind") == "study"
    notes = check_output(output, "study", overwrite=overwrite, resume=resume, flag="--output")
    quiet_libraries()
    from paligemma_cli.model.load import resolve_model_path

    base_folder = resolve_model_path(spec.base_model)
    check_study(spec, base_folder)  # experts against the base, the grid's parameters: nothing loads
    from paligemma_cli.study.run import REPORT, StudyRun, check_continues

    if resume:
        check_continues(spec, output)  # an earlier study with other settings is not mixed in

    events = StudyEvents()
    with claim_output(output, "study", overwrite=overwrite, resume=resume, flag="--output") as out:
        try:
            for note in notes + out.notes:
                events.message(note, "warning")
            StudyRun(spec, out, base_folder, events=events, save_merges=save_merges).run()
        finally:
            events.close()
    console.print(Text((output / REPORT).read_text()), highlight=False, soft_wrap=True)
    console.print(Text(f"Wrote {output / 'results.csv'}, {output / REPORT}"), highlight=False, soft_wrap=True)

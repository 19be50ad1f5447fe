"""`pgm data synth` and `pgm data layout`: synthetic official-format data sets and layout help."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from paligemma_cli.cli._ui import console, edge

app = typer.Typer(help="Write synthetic data sets in each task's official layout; show the layouts.",
                  no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


@app.command("synth")
@edge
def synth(task: str = typer.Argument(..., help="coco, docvqa, gqa or vqav2."),
          out_dir: Path = typer.Argument(..., help="Folder to write (becomes --data-root)."),
          num_examples: int = typer.Option(64, "--num-examples", "-n", min=1,
                                           help="Images per split (each has 1-2 questions)."),
          seed: int = typer.Option(0, "--seed", help="Seed for the scenes."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier `pgm data synth` in "
                                         "OUT_DIR (only the files pgm wrote; a folder with other files is "
                                         "refused).")) -> None:
    """Write a small synthetic data set of coloured shapes in TASK's official on-disk format."""
    from paligemma_cli.outputs import check_output, claim_output
    from paligemma_cli.tasks import get_task

    t = get_task(task)
    notes = check_output(out_dir, "synth", overwrite=overwrite, flag="")
    with claim_output(out_dir, "synth", overwrite=overwrite, flag="") as output:
        for note in notes + output.notes:
            console.print(note, style="yellow", highlight=False, markup=False)
        with output.staged() as tmp:  # the files appear together, when all are written
            names = [p.name for p in t.write_synthetic(tmp, num_examples, seed)]
    console.print(f"Wrote synthetic {t.title} data to {out_dir} ({num_examples} images per split): "
                  + ", ".join(names), highlight=False, markup=False)
    console.print(f"Train with: pgm train {t.name} --model-path tiny --data-root {out_dir}", highlight=False,
                  markup=False)


@app.command("layout")
@edge
def layout(task: str = typer.Argument(..., help="coco, docvqa, gqa or vqav2.")) -> None:
    """Show the official on-disk layout `--data-root` must have for TASK."""
    from paligemma_cli.tasks import get_task

    t = get_task(task)
    for role, split in (("train", t.train_split), ("eval", t.eval_split)):
        console.print(f"[bold]{role}[/] (--{role}-split {escape(split)}): {escape(t.layout(split))}", highlight=False)

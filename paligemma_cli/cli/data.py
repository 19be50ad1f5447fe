"""`pgm data synth` and `pgm data layout`: synthetic official-format data sets and layout help."""

from __future__ import annotations

from pathlib import Path

import typer

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
          overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder.")) -> None:
    """Write a small synthetic data set of coloured shapes in TASK's official on-disk format."""
    from paligemma_cli.errors import PgmError
    from paligemma_cli.tasks import get_task

    t = get_task(task)
    if out_dir.exists() and not out_dir.is_dir():
        raise PgmError(f"{out_dir} is a file.", "Give a folder path.")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise PgmError(f"{out_dir} is not empty.", "Choose an empty folder, or pass --overwrite.")
    try:
        files = t.write_synthetic(out_dir, num_examples, seed)
    except OSError as exc:  # read-only folder, disk full
        raise PgmError(f"Cannot write {out_dir}: {exc.strerror or exc}.", "Choose a folder you can write to.") from None
    console.print(f"Wrote synthetic {t.title} data to {out_dir} ({num_examples} images per split): "
                  + ", ".join(p.name for p in files), highlight=False)
    console.print(f"Train with: pgm train {t.name} --model-path tiny --data-root {out_dir}", highlight=False)


@app.command("layout")
@edge
def layout(task: str = typer.Argument(..., help="coco, docvqa, gqa or vqav2.")) -> None:
    """Show the official on-disk layout `--data-root` must have for TASK."""
    from paligemma_cli.tasks import get_task

    t = get_task(task)
    for role, split in (("train", t.train_split), ("eval", t.eval_split)):
        console.print(f"[bold]{role}[/] (--{role}-split {split}): {t.layout(split)}", highlight=False)

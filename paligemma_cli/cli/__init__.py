"""The `pgm` console script: thin Typer commands over the engine.

Only Typer, rich and the config dataclasses are imported here, so `pgm --help` stays fast; each
command imports the engine (torch, transformers) when it runs.
"""

from __future__ import annotations

from typing import Optional

import typer

from paligemma_cli import __version__
from paligemma_cli.cli import data as data_cmd
from paligemma_cli.cli import doctor as doctor_cmd
from paligemma_cli.cli import eval as eval_cmd
from paligemma_cli.cli import memory as memory_cmd
from paligemma_cli.cli import merge as merge_cmd
from paligemma_cli.cli import predict as predict_cmd
from paligemma_cli.cli import study as study_cmd
from paligemma_cli.cli import train as train_cmd
from paligemma_cli.cli._once import OneValueCommand
from paligemma_cli.cli._ui import edge

app = typer.Typer(
    name="pgm",
    help="Fine-tune PaliGemma with QLoRA, evaluate with the official metrics, merge the results.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pgm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Optional[bool] = typer.Option(
        None, "--version", "-V", callback=_version, is_eager=True, help="Show the version and exit.")):
    """Fine-tune PaliGemma with QLoRA, evaluate with the official metrics, merge the results.

    Start with `pgm data synth vqav2 data/ --num-examples 64` and
    `pgm train vqav2 --model-path tiny --data-root data/` to see the whole loop on CPU.
    """


app.command("train", help=train_cmd.HELP, cls=OneValueCommand)(edge(train_cmd.train))
app.add_typer(data_cmd.app, name="data")
app.command("eval", help=eval_cmd.HELP, cls=OneValueCommand)(edge(eval_cmd.eval_command))
# Further commands register below (one line each).
app.command("doctor", help=doctor_cmd.HELP, cls=OneValueCommand)(edge(doctor_cmd.doctor))
app.command("memory-estimate", help=memory_cmd.HELP, cls=OneValueCommand)(edge(memory_cmd.memory_estimate))
app.command("merge", help=merge_cmd.HELP, cls=OneValueCommand)(edge(merge_cmd.merge))
app.command("predict", help=predict_cmd.HELP, cls=OneValueCommand)(edge(predict_cmd.predict_command))
app.command("study", help=study_cmd.HELP, cls=OneValueCommand)(edge(study_cmd.study))


def main() -> None:
    app()

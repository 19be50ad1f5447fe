"""`pgm doctor`: environment checks (PASS / WARN / FAIL + the fix) and `--error` diagnoses."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from paligemma_cli.cli._options import command_with, parameters_for
from paligemma_cli.cli._ui import console, is_interactive
from paligemma_cli.config import DEFAULT_MODEL, DataConfig, EvalConfig, LoraConfig, ModelConfig, TrainConfig
from paligemma_cli.errors import PgmError

HELP = ("Check Python, packages, torch/CUDA, GPUs, bitsandbytes (a real NF4 matmul), the Hugging Face "
        "login, disk, Java, CoreNLP, W&B and accelerate: a table of the checks, then each WARN/FAIL "
        "with its fix and the commands to run, one per line (--json: the same as data). "
        "`--error FILE|-` diagnoses a pasted traceback or log instead. Exit 1 if anything fails.")
STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}
_SHARED = ("model_path", "output_dir", "batch_size", "gradient_accumulation_steps")
_EXCLUDE = tuple(f.name for cls in (ModelConfig, LoraConfig, DataConfig, TrainConfig, EvalConfig)
                 for f in dataclasses.fields(cls) if f.name not in _SHARED)


@command_with(parameters_for(ModelConfig, TrainConfig, exclude=_EXCLUDE))
def doctor(
    online: bool = typer.Option(False, "--online", help=(
        "Also ask the hub (short timeout): whoami for the token and access to the gated "
        "--model-path. Offline, this is a WARN, never a hang.")),
    error: Optional[str] = typer.Option(None, "--error", metavar="FILE|-", help=(
        "Diagnose a traceback or log (a file, or - for stdin) instead of checking: CUDA OOM (with "
        "the --batch-size / accumulation that fits), bitsandbytes setup, 401/403 on gated repos, "
        "token_type_ids / missing labels, NaN loss, Java, SPICE ...")),
    timeout: float = typer.Option(5.0, "--timeout", min=0.5, help="Seconds per online request."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    **flags,
) -> None:
    from paligemma_cli.diagnose import doctor as engine

    if not math.isfinite(timeout):  # inf passes Typer's min=0.5 (nan it rejects)
        raise PgmError(f"--timeout must be a finite number of seconds (got {timeout}).", "E.g. --timeout 5.")
    model_path = flags.get("model_path") or DEFAULT_MODEL
    if error is not None:
        _diagnose(error, model_path, flags, as_json)
        return
    opts = engine.DoctorOptions(model_path=model_path,
                                output_dir=Path(flags.get("output_dir") or TrainConfig.output_dir),
                                online=online, timeout_s=timeout)
    if as_json or not is_interactive():
        checks = engine.run_checks(opts)
    else:
        with console.status("Checking the environment..."):
            checks = engine.run_checks(opts)
    code = engine.exit_code(checks)
    if as_json:
        typer.echo(json.dumps({"ok": code == 0, "checks": [dataclasses.asdict(c) for c in checks]}, indent=2))
    else:
        _print_checks(checks)
    if code:
        raise typer.Exit(code)


def _print_checks(checks) -> None:
    """A compact table (one row per check), then each WARN/FAIL in full with its commands.

    The finding is cut to the row at narrow widths (the full text follows for problems, and
    `--json` has all); fixes wrap at word boundaries, and each command is printed on its own
    line, never wrapped by rich, so it can be copied whole.
    """
    name_width = max(len(c.name) for c in checks)
    natural = name_width + len("Status") + max(len(c.detail) for c in checks) + 6  # + column gaps
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold",
                  width=min(console.width, natural))
    table.add_column("Check", no_wrap=True, width=name_width)
    table.add_column("Status", no_wrap=True, width=len("Status"))
    table.add_column("Finding", no_wrap=True, overflow="ellipsis", ratio=1)  # the rest of the width
    for c in checks:
        table.add_row(escape(c.name), f"[{STYLE[c.status]}]{c.status}[/]", escape(c.detail))
    console.print(table, highlight=False)
    counts = {s: sum(c.status == s for c in checks) for s in STYLE}
    console.print(", ".join(f"[{STYLE[s]}]{n} {s}[/]" for s, n in counts.items()), highlight=False)
    problems = [c for c in checks if c.status != "PASS"]
    if problems:
        console.print()
    for c in problems:
        console.print(f"[bold {STYLE[c.status]}]{c.status}[/] [bold]{escape(c.name)}[/]: {escape(c.detail)}",
                      highlight=False)
        if c.fix:
            console.print(Padding(Text(c.fix), (0, 0, 0, 2)), highlight=False)
        for command in c.commands:
            console.print(Text(f"    {command}", style="cyan"), soft_wrap=True, highlight=False)


def _read_log(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(errors="replace")
    except OSError as exc:
        raise PgmError(f"--error {source}: {exc.strerror}.", "Give a log file, or - to read stdin.") from None


def _diagnose(source: str, model_path: str, flags: dict, as_json: bool) -> None:
    from paligemma_cli.diagnose.known_errors import diagnose_error

    found = diagnose_error(_read_log(source), model_path=model_path,
                                  batch_size=flags.get("batch_size"),
                                  gradient_accumulation_steps=flags.get("gradient_accumulation_steps"))
    if as_json:
        typer.echo(json.dumps({"recognised": bool(found),
                               "diagnoses": [dataclasses.asdict(d) for d in found]}, indent=2))
    elif not found:
        console.print("[yellow]No known error pattern found.[/] Run `pgm doctor` for the environment "
                      "checks, or open an issue with the full log.", highlight=False)
    for d in [] if as_json else found:
        console.print(f"[bold red]{escape(d.title)}[/]  [dim]({d.key})[/]", highlight=False)
        if d.evidence:
            console.print(f"  [dim]seen:[/] {escape(d.evidence)}", highlight=False)
        console.print(f"  [bold]why:[/] {escape(d.cause)}", highlight=False)
        console.print(f"  [bold green]fix:[/] {escape(d.fix)}", highlight=False)
    if not found:
        raise typer.Exit(1)

"""Console helpers shared by the commands: the error edge and rich progress callbacks."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

import typer
from rich.console import Console
from rich.text import Text

from paligemma_cli.errors import PgmError

console = Console()
err_console = Console(stderr=True)


def error_line(message: str, hint: str | None = None) -> None:
    """One red `Error:` line; message and hint are printed verbatim (a path like `[bold]x` is text)."""
    text = Text.assemble(("Error:", "bold red"), " ", message)
    if hint:
        text.append(" ").append(hint, style="dim")
    err_console.print(text, highlight=False, soft_wrap=True)


def edge(func: Callable) -> Callable:
    """Run a command; turn PgmError (and the few known runtime faults) into one red line + exit 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PgmError as exc:
            error_line(exc.message, exc.hint)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            error_line("Interrupted.")
            raise typer.Exit(130) from None
        except Exception as exc:  # only faults with a known fix become one line; bugs keep their traceback
            if type(exc).__name__ == "OutOfMemoryError":
                error_line("CUDA ran out of memory.",
                           "Lower --batch-size and raise --gradient-accumulation-steps "
                           "(`pgm memory-estimate --gpu-memory <GB>` says what fits), or run "
                           "`pgm doctor --error <log>`.")
                raise typer.Exit(1) from None
            raise

    return wrapper


def quiet_libraries() -> None:
    """Silence library chatter (progress bars, advisory warnings) that would bury pgm's output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def is_interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")

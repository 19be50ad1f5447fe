"""User text is printed as it is: a path, key or answer with [brackets] is never read as rich markup."""

from __future__ import annotations

from paligemma_cli.cli import _ui, progress

TRICKY = "runs/[bold]x.json [/] [red]"


def test_the_error_line_prints_message_and_hint_verbatim():
    with _ui.err_console.capture() as captured:
        _ui.error_line(f"Cannot read {TRICKY}.", f"Check {TRICKY}.")
    assert captured.get().strip() == f"Error: Cannot read {TRICKY}. Check {TRICKY}."


def test_progress_lines_print_engine_text_verbatim():
    events = progress.RichEvents()
    with progress.console.capture() as captured:
        events.message(f"Resuming from {TRICKY}", "warning")
        events.message(f"note {TRICKY}")
        events.phase_start(f"Reading {TRICKY}")
        events.phase_end("done")
        events.checkpoint_saved(TRICKY, 1)
    events.close()
    text = captured.get()
    assert f"Resuming from {TRICKY}\n" in text and f"note {TRICKY}\n" in text
    assert f"Reading {TRICKY} ...\n" in text and f"Reading {TRICKY}: done (" in text
    assert f"checkpoint {TRICKY}\n" in text

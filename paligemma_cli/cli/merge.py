"""`pgm merge`: flags -> MergeRequest -> merge.driver.merge -> rich table. No logic here."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from paligemma_cli.cli._ui import console, err_console, is_interactive, quiet_libraries
from paligemma_cli.errors import PgmError
from paligemma_cli.merge.catalog import METHOD_INFO

# One line per method for --help and a bare `pgm merge`, <= 56 characters so each fits 80 columns.
# merge/catalog.py holds the full definitions (README's table too); a test keeps the keys in step.
BRIEF = {
    "linear": "weighted average of the full weights",
    "task_arithmetic": "base + lambda x weighted sum of the task vectors",
    "ties": "trim to --density, elect signs, mean of agreeing entries",
    "dare_ties": "random drop to --density and rescale, then TIES signs",
    "dare_linear": "random drop to --density and rescale, weighted sum",
    "magnitude_prune": "trim to --density, weighted sum (TIES without signs)",
    "layerswap": "whole decoder layers from one model per --layers range",
    "slerp": "spherical interpolation of exactly two models",
    "tsv": "TSV-M: per-task top singular vectors, orthogonalised",
    "iso_c": "Iso-C: SVD of the sum, all singular values equal",
    "iso_cts": "Iso-CTS: common + task-specific subspaces, isotropic",
    "breadcrumbs": "drop the smallest and the largest |tau|, weighted sum",
    "breadcrumbs_ties": "Breadcrumbs' drop, then TIES sign election",
    "della": "rank-weighted random drop (DELLA), then TIES signs",
    "della_linear": "rank-weighted random drop (DELLA), weighted sum",
    "regmean": "RegMean: least squares over each task's layer inputs",
}
METHOD_LINES = "\n".join(f"  {name:<16} {BRIEF[name]}" for name in METHOD_INFO)
USAGE = "pgm merge METHOD --base-model B --model A --model C -o OUT"

_PARAGRAPHS = (
    "Merge fine-tuned PaliGemmas (full model folders or LoRA adapters, mixed freely) into one.",
    "METHOD (or --mode METHOD, the original tool's flag; default ties):",
    METHOD_LINES,
    "Every method works on task vectors of the full weights, tau_i = theta_i - theta_base; for an "
    "adapter tau = B·A·alpha/r on each target module (rank_pattern, alpha_pattern and rsLoRA "
    "respected). README.md's Merging section defines each method exactly.",
    "Not PEFT's add_weighted_adapter: that trims, drops and elects signs on the LoRA factors A and B "
    "separately, so its 'ties' of two adapters is not TIES on their weight changes B·A. Here the "
    "change of every module is merged as a whole, as in the TIES and DARE papers and mergekit.",
    "Streams tensor by tensor (safetensors): merging two 3B models peaks at about 1.5 GB of RAM. Writes a "
    "full model folder (sharded safetensors + config + processor) that from_pretrained and pgm load; "
    "with --output-format adapter (adapters only), a LoRA of rank --rank fitted by truncated SVD, "
    "with the relative error per module (modules smaller than --rank keep their size, in rank_pattern).",
    "regmean needs data: each model runs on --calibrate TASK=DATA_ROOT (its task's training examples, "
    "--calibration-samples of them) while hooks collect each linear layer's input Gram matrix; the "
    "merged weight solves the least-squares problem over all tasks' inputs.",
    "tsv, iso_c and iso_cts take the SVD of whole 2-D task matrices (float32, float64 Gram matrices "
    "for the large ones), on the GPU when torch sees one (--device). A method that adds several task "
    "vectors at lambda 1 without --normalize prints a warning: its change is N experts' worth.",
    "Examples:",
    "  pgm merge ties --base-model google/paligemma-3b-pt-224 --model runs/vqav2 --model runs/coco "
    "--density 0.3 -o merged",
    "  pgm merge dare_ties --base-model tiny --model a --model b --model c --weight 1 --weight 0.5 "
    "--weight 0.5 --seed 7 -o merged",
    "  pgm merge task_arithmetic --base-model tiny --model a --model b --output-format adapter "
    "--rank 16 -o merged-lora",
    "  pgm merge tsv --base-model tiny --model a --model b --model c --lambda 1.0 -o merged",
    "  pgm merge regmean --base-model tiny --model runs/vqav2 --model runs/gqa --calibrate vqav2=data/vqav2 "
    "--calibrate gqa=data/gqa -o merged",
)
HELP = "\n\n".join(_PARAGRAPHS)


def merge(
    method: Optional[str] = typer.Argument(
        None, metavar="METHOD", show_default=False,
        help=f"Merge method: {', '.join(METHOD_INFO)} (default ties)."),
    base_model: Optional[str] = typer.Option(
        None, "--base-model", help="The model every input was fine-tuned from: a folder, a hub id, or 'tiny'."),
    model: Optional[List[str]] = typer.Option(
        None, "--model", "-m", help="A fine-tuned model folder or PEFT adapter folder (or hub id); repeat, 2 or more."),
    model_a: Optional[str] = typer.Option(None, "--model-a", help="First model (merge_vlm.py's flag; goes before --model)."),
    model_b: Optional[str] = typer.Option(None, "--model-b", help="Second model (merge_vlm.py's flag)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder to create with the merge."),
    mode: Optional[str] = typer.Option(
        None, "--mode", help="The method as a flag (merge_vlm.py's spelling); same as METHOD."),
    weight: Optional[List[float]] = typer.Option(
        None, "--weight", "-w", help="Weight of each model, in model order (default 1 each)."),
    density: Optional[float] = typer.Option(
        None, "--density", help="Fraction of each task vector kept, in (0, 1] (default 0.3: ties, dare_*, "
                                "magnitude_prune; 0.9: breadcrumbs*; 0.7: della*)."),
    lam: Optional[float] = typer.Option(
        None, "--lambda", help="Scale of the merged task vector (alpha of tsv, iso_c, iso_cts); default 1."),
    seed: int = typer.Option(0, "--seed", help="Seed of DARE's and DELLA's random drop: same seed, same merge."),
    normalize: Optional[bool] = typer.Option(
        None, "--normalize/--no-normalize",
        help="Divide by the sum of the weights (per entry, of the agreeing ones, under sign election). "
             "Default: on for linear, ties, dare_ties and della; off for the others."),
    gamma: Optional[float] = typer.Option(
        None, "--gamma", help="breadcrumbs*: fraction of the largest |tau| dropped, in [0, 1) (default 0.01)."),
    epsilon: Optional[float] = typer.Option(
        None, "--epsilon", help="della*: keep probabilities span density +- epsilon (default 0.1)."),
    common_fraction: Optional[float] = typer.Option(
        None, "--common-fraction", help="iso_cts: share of each matrix's rank given to the common subspace "
                                        "(default 0.8)."),
    device: Optional[str] = typer.Option(
        None, "--device", help="tsv, iso_c, iso_cts: where the SVDs run: auto (CUDA when torch sees it), "
                               "cpu or cuda (default auto)."),
    calibrate: Optional[List[str]] = typer.Option(
        None, "--calibrate", metavar="TASK=DATA_ROOT", help="regmean: the task data each model runs on to "
        "collect its layers' input Gram matrices; one per --model, in the same order (e.g. vqav2=/data/vqav2)."),
    calibration_samples: Optional[int] = typer.Option(
        None, "--calibration-samples", help="regmean: training examples per task (default 256)."),
    regmean_alpha: Optional[float] = typer.Option(
        None, "--regmean-alpha", help="regmean: weight of the Gram matrices' off-diagonal, in (0, 1] (default 0.9; "
                                      "1 is the exact least-squares merge)."),
    layers: Optional[str] = typer.Option(
        None, "--layers", help="layerswap: decoder layer ranges and the model (1.., or 'base') each comes from, e.g. 0-8=1,9-17=2."),
    output_format: str = typer.Option("full", "--output-format", help="full (a model folder) or adapter (every input an adapter)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Rank of the adapter output (default: the sum of the input ranks)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier pgm merge in --output "
                                   "(only the files pgm wrote there; a folder with other files is refused)."),
    skip_base_check: bool = typer.Option(
        False, "--skip-base-check", help="Accept adapters whose recorded base differs from --base-model (e.g. a local copy)."),
    push_to_hub: Optional[str] = typer.Option(
        None, "--push-to-hub", metavar="REPO_ID", help="After the merge succeeds, upload the folder and a model card "
        "(README.md) to this Hugging Face repo in one commit (a token is checked before merging)."),
    hub_private: bool = typer.Option(False, "--hub-private", help="Create the --push-to-hub repo as private."),
) -> None:
    models = tuple(m for m in (model_a, model_b) if m) + tuple(model or ())
    if method is None and mode is None and not models and base_model is None and output is None:
        _list_methods()
        raise typer.Exit(2)
    method = _resolve_method(method, mode)
    missing = [f for f, v in (("--base-model", base_model), ("--output", output)) if not v]
    if missing:
        raise PgmError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required.",
                       f"Example: pgm merge {method} --base-model tiny --model a --model b --output merged.")
    if hub_private and not push_to_hub:
        raise PgmError("--hub-private only applies with --push-to-hub REPO_ID.",
                       "Add --push-to-hub, or drop --hub-private.")
    if push_to_hub:
        from paligemma_cli.hub.push import check_push

        check_push(push_to_hub)  # before the merge: a missing token should not wait for it
    quiet_libraries()
    from paligemma_cli.merge.driver import MergeRequest
    from paligemma_cli.merge.driver import merge as run_merge

    request = MergeRequest(base_model=base_model, models=models, output=output, mode=method,
                           weights=tuple(weight) if weight else None, density=density, lam=lam, seed=seed,
                           normalize=normalize, layers=layers, output_format=output_format, rank=rank,
                           overwrite=overwrite, check_base=not skip_base_check, gamma=gamma, epsilon=epsilon,
                           common_fraction=common_fraction, device=device, calibrate=tuple(calibrate or ()),
                           calibration_samples=calibration_samples, regmean_alpha=regmean_alpha)
    with _progress() as progress:
        result = run_merge(request, progress, _warn, events=_calibration_events() if calibrate else None)
    _report(result)
    if push_to_hub:
        from paligemma_cli.hub.push import push_merge

        url = push_merge(result.output, push_to_hub, private=hub_private,
                         command=merge_command(request, push_to_hub, hub_private))
        console.print(f"Pushed {result.output} to {url}", highlight=False, markup=False)


def merge_command(req, push_to_hub: str, hub_private: bool) -> str:
    """The `pgm merge` command line of `req`, for the model card: the values given, defaults left out."""
    import shlex

    words = ["pgm", "merge", req.mode, "--base-model", req.base_model]
    words += [w for m in req.models for w in ("--model", m)]
    words += [w for x in req.weights or () for w in ("--weight", f"{x:g}")]
    for name, value in (("--density", req.density), ("--lambda", req.lam), ("--gamma", req.gamma),
                        ("--epsilon", req.epsilon), ("--common-fraction", req.common_fraction),
                        ("--layers", req.layers), ("--rank", req.rank), ("--seed", req.seed or None)):
        words += [name, f"{value:g}" if isinstance(value, float) else str(value)] if value is not None else []
    words += [] if req.normalize is None else ["--normalize" if req.normalize else "--no-normalize"]
    words += ["--output-format", req.output_format] if req.output_format != "full" else []
    words += ([] if req.check_base else ["--skip-base-check"]) + ["-o", str(req.output), "--push-to-hub", push_to_hub]
    return shlex.join(words + (["--hub-private"] if hub_private else []))


def _calibration_events():
    from paligemma_cli.cli.progress import RichEvents

    return RichEvents()


def _warn(line: str) -> None:
    err_console.print(f"[bold yellow]Warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def _resolve_method(method: str | None, mode: str | None) -> str:
    """METHOD and --mode are one setting: either, or both alike; an unknown name lists the known."""
    if method is not None and mode is not None and method != mode:
        raise PgmError(f"METHOD {method!r} and --mode {mode!r} disagree.",
                       f"Give the method once: pgm merge {method} ... (--mode is its old spelling).")
    name, source = (method, "METHOD") if method is not None else (mode, "--mode")
    if name is None:
        return "ties"
    if name not in METHOD_INFO:
        close = difflib.get_close_matches(name, METHOD_INFO, n=1)
        raise PgmError(f"{source} {name!r} is not a merge method{f' (did you mean {close[0]}?)' if close else ''}.",
                       f"Supported: {', '.join(METHOD_INFO)}.")
    return name


def _list_methods() -> None:
    console.print(f"Usage: {USAGE}\n\nMETHOD is one of:\n{METHOD_LINES}\n\n"
                  "`pgm merge --help` lists every option.", highlight=False, markup=False)


class _progress:
    """A rich progress bar on a terminal; nothing when output is captured."""

    def __enter__(self):
        self.bar = None
        if is_interactive():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("merge"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                TimeElapsedColumn(), TextColumn("[dim]{task.description}"),
                                console=err_console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=1)
        return self.update if self.bar else None

    def update(self, done: int, total: int, name: str) -> None:
        self.bar.update(self.task, completed=done, total=total, description=name)

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()


def _count(n: int, of: int) -> str:
    return f"{n:,} ({100 * n / of:.1f}%)" if of else "0"


def _report(result) -> None:
    p = result.params
    info = METHOD_INFO[result.method]
    knobs = [f"weights {', '.join(f'{w:g}' for w in p.weights)}"] if info.weighted else []
    if info.sparsify:
        knobs.append(f"density {p.density:g}")
    knobs += [f"{name.replace('_', ' ')} {getattr(p, name):g}" for name in info.options]
    if info.takes_lambda:
        knobs.append(f"lambda {p.lam:g}")
    if info.normalizable:
        knobs.append("normalized" if p.normalize else "not normalized")
    if info.random:
        knobs.append(f"seed {p.seed}")
    if info.spectral:
        knobs.append(f"SVDs on {p.device}")
    table = Table(title=f"pgm merge: {result.method} of {len(p.weights)} inputs "
                        f"({', '.join(sorted(set(result.kinds)))}); {'; '.join(knobs)}", title_justify="left",
                  caption="entries: task-vector entries (numel x models); trimmed: non-zero entries zeroed by "
                          "trimming or DARE's drop; conflicts: entries whose kept values disagreed in sign "
                          "(the elected sign won)", caption_justify="left")
    for column in ("part", "tensors", "entries", "trimmed", "conflicts", "time"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part, s in result.parts.items():
        merged = part != "unchanged"
        table.add_row(escape(part), f"{s.tensors:,}", f"{s.entries:,}",
                      _count(s.trimmed, s.entries) if info.sparsify and merged else "-",
                      _count(s.conflicts, s.entries // max(len(p.weights), 1)) if info.consensus and merged else "-",
                      f"{s.seconds:.1f} s")
    console.print(table)
    if result.lowrank_errors:
        errors = sorted(result.lowrank_errors.items(), key=lambda kv: -kv[1])
        low = Table(title="LoRA refit: relative error ||dW - B·A|| / ||dW|| per module (worst first)",
                    title_justify="left")
        low.add_column("module")
        low.add_column("error", justify="right")
        for module, err in errors[:20]:
            low.add_row(escape(module), f"{err:.2e}")
        if len(errors) > 20:
            low.add_row(f"... {len(errors) - 20} more in pgm_merge.json", "")
        console.print(low)
    for note in result.notes:
        err_console.print(note, style="yellow", highlight=False, markup=False)
    console.print(f"Wrote {result.output} ({', '.join(result.files[:3])}"
                  f"{', ...' if len(result.files) > 3 else ''}) in {result.seconds:.1f} s.", highlight=False,
                  markup=False)

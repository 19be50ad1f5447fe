"""Benchmark `pgm merge` beside mergekit on synthetic checkpoints with PaliGemma-3B's tensor shapes.

Writes a base and two "full fine-tunes" (base + noise on every tensor, bf16, sharded safetensors
as save_pretrained writes them) into a temp dir, then runs, each in its own process so peaks do
not mix (peak RSS from os.wait4's rusage, i.e. the kernel's high-water mark of that process):

  read          read every tensor of the three inputs once (same safetensors reads as the merge)
  pgm METHOD    paligemma_cli.merge.driver.merge, density 0.3 (TIES twice: with an empty
                torch.compile cache, as on a fresh machine, then warm)
  mergekit ...  mergekit-yaml with the equivalent recipe, installed into a throw-away venv
                (bench/mergekit_compare.py), for ties, dare_ties and task_arithmetic; its
                output is compared with pgm's entry by entry
  naive         load every state dict whole, merge them in memory (tensors.merged_state_dict), save

The page cache of the inputs is dropped (posix_fadvise DONTNEED) before each run, so each starts
from disk. The naive variant needs ~3.2x the model size in RAM; where the machine does not have
that free, it runs on a scaled-down model (fewer layers) alongside a pgm run of the same scaled
model, and the table says so. The temp dir is deleted at the end.

    .venv/bin/python bench/bench_merge.py [--layers-fraction 1.0] [--workdir /tmp] [--no-naive]
        [--methods ties,dare_ties,task_arithmetic] [--mergekit-venv DIR]
        [--svd-methods tsv,iso_cts [--device auto|cpu|cuda]]

`--svd-methods` times the SVD methods (no mergekit equivalent) beside pgm ties in the same run:
read, ties cold and warm, then each method, whole processes, with their wall time, CPU time and
peak RSS and the ratio to ties (warm). `--device cuda` runs their SVDs on the GPU.
"""

from __future__ import annotations

import contextlib
import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# google/paligemma-3b-pt-224: SigLIP-So400m/14 (27 layers) + projector + Gemma-2B (18 layers)
VOCAB, HIDDEN, INTER, HEAD_DIM, KV_HEADS = 257216, 2048, 16384, 256, 1
DEVICE = "auto"  # --device of the SVD methods (auto: CUDA when torch sees it)
V_HIDDEN, V_INTER, PATCH, IMAGE = 1152, 4304, 14, 224


def paligemma_3b_shapes(text_layers: int = 18, vision_layers: int = 27) -> list[tuple[str, tuple[int, ...]]]:
    """(checkpoint name, shape) of every tensor save_pretrained writes for PaliGemma-3B."""
    shapes = [("language_model.model.embed_tokens.weight", (VOCAB, HIDDEN)),
              ("language_model.model.norm.weight", (HIDDEN,)),
              ("multi_modal_projector.linear.weight", (HIDDEN, V_HIDDEN)),
              ("multi_modal_projector.linear.bias", (HIDDEN,)),
              ("vision_tower.vision_model.embeddings.patch_embedding.weight", (V_HIDDEN, 3, PATCH, PATCH)),
              ("vision_tower.vision_model.embeddings.patch_embedding.bias", (V_HIDDEN,)),
              ("vision_tower.vision_model.embeddings.position_embedding.weight", ((IMAGE // PATCH) ** 2, V_HIDDEN)),
              ("vision_tower.vision_model.post_layernorm.weight", (V_HIDDEN,)),
              ("vision_tower.vision_model.post_layernorm.bias", (V_HIDDEN,))]
    for i in range(text_layers):
        p = f"language_model.model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (HIDDEN,)), (p + "post_attention_layernorm.weight", (HIDDEN,)),
                   (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
                   (p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
                   (p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
                   (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
                   (p + "mlp.gate_proj.weight", (INTER, HIDDEN)), (p + "mlp.up_proj.weight", (INTER, HIDDEN)),
                   (p + "mlp.down_proj.weight", (HIDDEN, INTER))]
    for i in range(vision_layers):
        p = f"vision_tower.vision_model.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            shapes += [(p + norm + ".weight", (V_HIDDEN,)), (p + norm + ".bias", (V_HIDDEN,))]
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes += [(p + f"self_attn.{proj}.weight", (V_HIDDEN, V_HIDDEN)), (p + f"self_attn.{proj}.bias", (V_HIDDEN,))]
        shapes += [(p + "mlp.fc1.weight", (V_INTER, V_HIDDEN)), (p + "mlp.fc1.bias", (V_INTER,)),
                   (p + "mlp.fc2.weight", (V_HIDDEN, V_INTER)), (p + "mlp.fc2.bias", (V_HIDDEN,))]
    return sorted(shapes)


def config_json(text_layers: int, vision_layers: int) -> dict:
    return {"architectures": ["PaliGemmaForConditionalGeneration"], "model_type": "paligemma",
            "dtype": "bfloat16", "image_token_index": 257152, "projection_dim": HIDDEN, "hidden_size": HIDDEN,
            "text_config": {"model_type": "gemma", "hidden_size": HIDDEN, "intermediate_size": INTER,
                            "num_hidden_layers": text_layers, "num_attention_heads": 8,
                            "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "vocab_size": VOCAB},
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": V_HIDDEN,
                              "intermediate_size": V_INTER, "num_hidden_layers": vision_layers,
                              "num_attention_heads": 16, "patch_size": PATCH, "image_size": IMAGE}}


def generate(root: Path, shapes, config: dict) -> dict[str, Path]:
    """base, model_a, model_b: bf16 base ~ N(0, 0.02), models = base + N(0, 0.002) everywhere."""
    import torch

    from paligemma_cli.merge.writer import ShardedWriter

    folders = {n: root / n for n in ("base", "model_a", "model_b")}
    writers = {}
    for name, folder in folders.items():
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        writers[name] = ShardedWriter(folder, [(k, s, "BF16") for k, s in shapes])
    gen = torch.Generator().manual_seed(0)
    for key, shape in shapes:
        rows = shape[0]
        step = max(1, (1 << 24) // max(1, math.prod(shape[1:])))
        for r in range(0, rows, step):
            piece = (min(step, rows - r), *shape[1:])
            base = torch.randn(piece, generator=gen).mul_(0.02)
            writers["base"].write(key, base.bfloat16())
            for name in ("model_a", "model_b"):
                writers[name].write(key, (base + torch.randn(piece, generator=gen).mul_(0.002)).bfloat16())
    for w in writers.values():
        w.close()
    return folders


def drop_cache(*folders: Path) -> None:
    """Evict these files from the page cache so the next variant reads them from disk."""
    for folder in folders:
        if folder.exists():
            for f in folder.glob("*.safetensors"):
                fd = os.open(f, os.O_RDONLY)
                os.fsync(fd)  # dirty pages cannot be dropped: write them back first
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)


CHILD = {
    "read": """
from paligemma_cli.merge.sources import safetensors_header, read_rows
from paligemma_cli.merge.tensors import _chunk_rows
total = 0
for folder in FOLDERS:
    for key, info in safetensors_header(Path(folder), "bench").items():
        for rows in _chunk_rows(info):
            total += read_rows(info.file, key, rows).numel()
RESULT["entries"] = total
""",
    "streaming": """
from paligemma_cli.merge.catalog import METHOD_INFO
from paligemma_cli.merge.driver import MergeRequest, merge
r = merge(MergeRequest(base_model=FOLDERS[0], models=tuple(FOLDERS[1:]), output=Path(OUT), mode=MODE, overwrite=True,
                       density=0.3 if METHOD_INFO[MODE].sparsify in ("magnitude", "random") else None,
                       device=DEVICE if METHOD_INFO[MODE].spectral else None))
RESULT["device"] = r.params.device
RESULT["trimmed"] = sum(s.trimmed for s in r.parts.values())
RESULT["conflicts"] = sum(s.conflicts for s in r.parts.values())
""",
    "naive": """
# Load every state dict whole, then run the same merge (same math, same output bytes) from memory
# and build the merged state dict in memory (tensors.merged_state_dict, the API `pgm study` uses)
# before saving it: the I/O pattern of load-everything merge scripts (merge_vlm.py: three
# from_pretrained, state_dict(), load_state_dict, save).
from safetensors.torch import load_file, save_file
import paligemma_cli.merge.sources as S
import paligemma_cli.merge.tensors as T
STATE = {}
for folder in FOLDERS:
    for f in sorted(Path(folder).glob("*.safetensors")):
        STATE[str(f)] = load_file(f)
RESULT["loaded_s"] = time.perf_counter() - T0

def from_memory(file, key, rows=None):
    t = STATE[str(file)][key]
    return t if rows is None else t[rows[0]:rows[1]]

S.read_rows = T.read_rows = from_memory
from paligemma_cli.merge.driver import MergeRequest, prepare
job = prepare(MergeRequest(base_model=FOLDERS[0], models=tuple(FOLDERS[1:]), mode="ties", density=0.3))
state, parts = T.merged_state_dict(job)
Path(OUT).mkdir(parents=True, exist_ok=True)
save_file(state, str(Path(OUT) / "model.safetensors"), metadata={"format": "pt"})
RESULT["trimmed"] = sum(s.trimmed for s in parts.values())
RESULT["conflicts"] = sum(s.conflicts for s in parts.values())
""",
}


def run_process(cmd: list[str], rss_limit_gb: float, env: dict | None = None) -> tuple[dict, str, int]:
    """Run `cmd` as a process: its wall time, CPU time and peak RSS from wait4 (the kernel's
    high-water mark); killed if its RSS passes `rss_limit_gb`, so a run that does not fit cannot
    push the machine into the OOM killer."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    watched, killed = psutil.Process(proc.pid), False
    # should memory still run out, the kernel kills the benchmarked process, not a bystander
    with contextlib.suppress(OSError):  # not Linux, or the child already gone
        Path(f"/proc/{proc.pid}/oom_score_adj").write_text("1000")
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        with contextlib.suppress(psutil.NoSuchProcess):  # it ended between wait4 and here
            mem = watched.memory_info()  # file-backed pages (mmapped checkpoints) can be dropped
            if mem.rss - mem.shared > rss_limit_gb * 1e9:
                watched.kill()
                killed = True
        time.sleep(0.2)
    output = proc.stdout.read()
    result = {"peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "cpu_s": usage.ru_utime + usage.ru_stime,
              "process_s": time.perf_counter() - started}
    if killed:
        result.update(seconds=float("nan"), error=f"killed above {rss_limit_gb:.0f} GB RSS")
    return result, output, os.waitstatus_to_exitcode(status)


def run_variant(name: str, folders: list[Path], out: Path, rss_limit_gb: float, mode: str = "ties",
                env: dict | None = None) -> dict:
    """Run one variant in a fresh interpreter after dropping the inputs from the page cache."""
    drop_cache(*folders)
    code = ("import json, time, sys\nfrom pathlib import Path\nsys.path.insert(0, %r)\nimport torch\n"
            "import safetensors.torch\nFOLDERS = %r\nOUT = %r\nMODE = %r\nDEVICE = %r\nRESULT = {}\n"
            "T0 = time.perf_counter()\n%s\n"
            "RESULT['seconds'] = time.perf_counter() - T0\nprint('RESULT ' + json.dumps(RESULT))\n"
            % (str(ROOT), [str(f) for f in folders], str(out), mode, DEVICE, CHILD[name]))
    result, output, code = run_process([sys.executable, "-c", code], rss_limit_gb, env)
    result["variant"] = name if name != "streaming" else f"pgm {mode}"
    if "error" in result:
        return result
    if code != 0:
        raise SystemExit(f"{name} failed ({code}):\n{output}")
    result.update(json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:]))
    return result


def run_mergekit(exe: Path, method: str, views: list[Path], folders: list[Path], out: Path,
                 rss_limit_gb: float, label: str = "") -> dict:
    """mergekit-yaml on the same files (page cache dropped first), timed as a process."""
    from mergekit_compare import write_yaml

    drop_cache(*folders)
    recipe = write_yaml(out.parent / f"{out.name}.yml", method, views, 0.3)
    result, output, code = run_process([str(exe), str(recipe), str(out), "--quiet"], rss_limit_gb)
    result["variant"] = f"mergekit {method}{label}"
    result.setdefault("seconds", result["process_s"])
    if "error" not in result and code < 0:  # SIGKILL: the kernel's OOM killer (it is chosen first)
        result.update(seconds=float("nan"), error=f"killed by signal {-code} after {result['process_s']:.0f} s")
    if "error" not in result and code != 0:
        raise SystemExit(f"mergekit {method} failed ({code}):\n{output[-3000:]}")
    return result


def same_output(a: Path, b: Path) -> bool:
    from safetensors import safe_open

    from paligemma_cli.merge.sources import safetensors_header

    ha, hb = safetensors_header(a, "a"), safetensors_header(b, "b")
    if ha.keys() != hb.keys():
        return False
    for key in ha:
        with safe_open(str(ha[key].file), "pt") as fa, safe_open(str(hb[key].file), "pt") as fb:
            if not fa.get_tensor(key).equal(fb.get_tensor(key)):
                return False
    return True


def table(rows: list[dict], size_gb: float, label: str) -> str:
    read = next(r for r in rows if r["variant"] == "read")["seconds"]
    lines = [f"| {label} | wall (s) | x read time | CPU (s) | peak RSS (GB) | x one model's size |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seconds']:.1f} | {r['seconds'] / read:.2f} | {r['cpu_s']:.0f} | "
                     f"{r['peak_rss_gb']:.2f} | {r['peak_rss_gb'] / size_gb:.2f} |")
    return "\n".join(lines)


def generated(root: Path, text_layers: int, vision_layers: int) -> tuple[list[Path], int]:
    shapes = paligemma_3b_shapes(text_layers, vision_layers)
    params = sum(math.prod(s) for _, s in shapes)
    started = time.perf_counter()
    folders = list(generate(root, shapes, config_json(text_layers, vision_layers)).values())
    print(f"generated 3 x {params / 1e9:.2f}B params ({params * 2 / 1e9:.2f} GB each) in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return folders, params


def _limit() -> float:
    import psutil

    return psutil.virtual_memory().available / 1e9 - 1.0  # leave the machine 1 GB


def _record(rows: list[dict], row: dict, params: int, load: float) -> None:
    row.update(load_before=round(load, 1), params_b=round(params / 1e9, 3))
    rows.append(row)
    print(json.dumps(row), flush=True)


def compare(root: Path, text_layers: int, vision_layers: int, variants: tuple[str, ...]) -> tuple[list[dict], float]:
    """Generate the three checkpoints, run `variants` on them, check naive == streaming, clean up."""
    folders, params = generated(root, text_layers, vision_layers)
    rows: list[dict] = []
    for variant in variants:
        load = os.getloadavg()[0]
        _record(rows, run_variant(variant, folders, root / f"out-{variant}", _limit()), params, load)
    if (root / "out-naive" / "model.safetensors").exists():
        rows[-1]["same_as_streaming"] = same_output(root / "out-streaming", root / "out-naive")
    shutil.rmtree(root, ignore_errors=True)
    return rows, params


def side_by_side(root: Path, layers: tuple[int, int], methods: list[str], venv_root: Path) -> tuple[list[dict], int]:
    """read, then per method pgm and mergekit on the same inputs (TIES twice for pgm: with an
    empty torch.compile cache, then warm), each output compared with mergekit's and deleted."""
    import mergekit_compare as mk

    exe = mk.make_venv(venv_root)
    folders, params = generated(root, *layers)
    views = mk.raw_names_view(folders, root / "views")
    compile_cache = {"TORCHINDUCTOR_CACHE_DIR": str(root / "inductor-cache")}  # starts empty: cold
    rows: list[dict] = []
    _record(rows, run_variant("read", folders, root / "out-read", _limit()), params, os.getloadavg()[0])
    for method in methods:
        runs = [("cold", compile_cache), ("warm", compile_cache)] if method == "ties" else [("", compile_cache)]
        for label, env in runs:
            load = os.getloadavg()[0]
            row = run_variant("streaming", folders, root / f"pgm-{method}", _limit(), method, env)
            row["variant"] += f" ({label})" if label else ""
            _record(rows, row, params, load)
        load = os.getloadavg()[0]
        row = run_mergekit(exe, method, views, folders, root / f"mk-{method}", _limit())
        if "error" not in row and method != "dare_ties":  # DARE's random masks differ by design
            row.update(mk.compare(root / f"pgm-{method}", root / f"mk-{method}", folders, method, 0.3))
        _record(rows, row, params, load)
        shutil.rmtree(root / f"mk-{method}", ignore_errors=True)
        shutil.rmtree(root / f"pgm-{method}", ignore_errors=True)
        if method == "ties":  # what mergekit does with the checkpoint as saved: how many it writes
            load = os.getloadavg()[0]
            row = run_mergekit(exe, method, folders, folders, root / "mk-as-saved", _limit(), " (config as saved)")
            from paligemma_cli.merge.sources import safetensors_header

            row["mergekit_tensors"] = len(safetensors_header(root / "mk-as-saved", "mergekit"))
            row["base_tensors"] = len(safetensors_header(folders[0], "base"))
            _record(rows, row, params, load)
            shutil.rmtree(root / "mk-as-saved", ignore_errors=True)
    return rows, params


def svd_beside_ties(root: Path, layers: tuple[int, int], methods: list[str]) -> tuple[list[dict], int]:
    """read, pgm ties (cold, then warm torch.compile cache), then each SVD method, whole
    processes on the same inputs; outputs deleted as they go."""
    folders, params = generated(root, *layers)
    compile_cache = {"TORCHINDUCTOR_CACHE_DIR": str(root / "inductor-cache")}
    rows: list[dict] = []
    _record(rows, run_variant("read", folders, root / "out-read", _limit()), params, os.getloadavg()[0])
    for method, label in [("ties", "cold"), ("ties", "warm")] + [(m, "") for m in methods]:
        load = os.getloadavg()[0]
        row = run_variant("streaming", folders, root / f"pgm-{method}", _limit(), method, compile_cache)
        row["variant"] += f" ({label})" if label else ""
        _record(rows, row, params, load)
        shutil.rmtree(root / f"pgm-{method}", ignore_errors=True)
    return rows, params


def svd_table(rows: list[dict], label: str) -> str:
    """The SVD methods beside pgm's TIES: wall (whole process), CPU, peak RSS, ratio to TIES warm."""
    ties = next(r["process_s"] for r in rows if r["variant"] == "pgm ties (warm)")
    lines = [f"| {label} | wall (s) | x pgm ties (warm) | CPU (s) | peak RSS (GB) | SVDs on |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        wall = r.get("error") or f"{r['process_s']:.1f}"
        ratio = "" if "error" in r or r["variant"] == "read" else f"{r['process_s'] / ties:.2f}"
        device = r.get("device", "") if r["variant"].split()[1:2] in (["tsv"], ["iso_c"], ["iso_cts"]) else ""
        lines.append(f"| {r['variant']} | {wall} | {ratio} | {r['cpu_s']:.0f} | {r['peak_rss_gb']:.2f} | {device} |")
    return "\n".join(lines)


def side_table(rows: list[dict], label: str) -> str:
    """pgm beside mergekit per method: wall (whole process), CPU, peak RSS, ratio, differences."""
    lines = [f"| {label} | wall (s) | x mergekit's wall | CPU (s) | peak RSS (GB) | max abs diff vs pgm "
             "| max abs diff off cut-off ties |", "|---|---:|---:|---:|---:|---:|---:|"]
    mk_wall = {r["variant"].split()[1]: r["process_s"] for r in rows if r["variant"].startswith("mergekit ")
               and "as saved" not in r["variant"] and "error" not in r}
    for r in rows:
        method = r["variant"].split()[1] if " " in r["variant"] else ""
        as_saved = "as saved" in r["variant"]
        ratio = f"{r['process_s'] / mk_wall[method]:.2f}" if method in mk_wall and "error" not in r \
            and not as_saved else ""
        if as_saved and "mergekit_tensors" in r:
            r = {**r, "variant": f"{r['variant']}: writes {r['mergekit_tensors']} of {r['base_tensors']} tensors"}
        diff = f"{r['max_abs_diff']:.3g}" if "max_abs_diff" in r else ""
        off = f"{r['max_abs_diff_off_ties']:.3g}" if "max_abs_diff_off_ties" in r else ""
        wall = r.get("error") or f"{r['process_s']:.1f}"
        lines.append(f"| {r['variant']} | {wall} | {ratio} | {r['cpu_s']:.0f} | {r['peak_rss_gb']:.2f} | {diff} | {off} |")
    return "\n".join(lines)


def main() -> None:
    global VOCAB, DEVICE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers-fraction", type=float, default=1.0, help="scale the model by its layer count")
    ap.add_argument("--naive-fraction", type=float, default=1 / 3,
                    help="layer fraction for the naive comparison when the full size does not fit in RAM")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--methods", default="ties,dare_ties,task_arithmetic",
                    help="methods run beside mergekit (comma-separated; empty: no mergekit rows)")
    ap.add_argument("--mergekit-venv", type=Path, default=None,
                    help="folder holding (or to hold) mergekit's venv, kept; default: a temp one, deleted")
    ap.add_argument("--no-naive", action="store_true", help="skip the read/streaming/naive tables")
    ap.add_argument("--vocab", type=int, default=VOCAB, help="embedding rows (fewer: a quick check of the script)")
    ap.add_argument("--svd-methods", default="",
                    help="SVD methods timed beside pgm ties (e.g. tsv,iso_cts; comma-separated; no mergekit rows)")
    ap.add_argument("--device", default=DEVICE, choices=("auto", "cpu", "cuda"),
                    help="--device of the SVD methods (auto: CUDA when torch sees it)")
    args = ap.parse_args()
    VOCAB, DEVICE = args.vocab, args.device

    import psutil
    import torch

    layers = (max(1, round(18 * args.layers_fraction)), max(1, round(27 * args.layers_fraction)))
    size_gb = sum(math.prod(s) for _, s in paligemma_3b_shapes(*layers)) * 2 / 1e9
    free_disk = shutil.disk_usage(args.workdir).free / 1e9
    if free_disk < 5.5 * size_gb:
        raise SystemExit(f"need {5.5 * size_gb:.0f} GB free in {args.workdir}, have {free_disk:.0f} GB")
    root = Path(tempfile.mkdtemp(prefix="pgm-bench-merge-", dir=args.workdir))
    sections, everything = [], []
    methods = [m for m in args.methods.split(",") if m]
    svd_methods = [m for m in args.svd_methods.split(",") if m]
    try:
        if svd_methods:
            rows, params = svd_beside_ties(root / "svd", layers, svd_methods)
            sections.append(svd_table(rows, f"{params / 1e9:.2f}B params, 3 inputs, bf16"))
            everything += rows
            shutil.rmtree(root / "svd", ignore_errors=True)
        if methods:
            rows, params = side_by_side(root / "side", layers, methods, args.mergekit_venv or root)
            sections.append(side_table(rows, f"{params / 1e9:.2f}B params, 3 inputs, bf16"))
            everything += rows
            shutil.rmtree(root / "side", ignore_errors=True)
        if not args.no_naive:
            # naive holds three models and builds a fourth: only at full size if that fits with room
            naive_fits = psutil.virtual_memory().available / 1e9 > 4.3 * size_gb + 3
            variants = ("read", "streaming", "naive") if naive_fits else ("read", "streaming")
            rows, params = compare(root / "full", *layers, variants)
            sections.append(table(rows, params * 2 / 1e9, f"{params / 1e9:.2f}B params, 3 inputs, bf16"))
            everything += rows
            if not naive_fits:
                small = (max(1, round(layers[0] * args.naive_fraction)),
                         max(1, round(layers[1] * args.naive_fraction)))
                rows, params = compare(root / "small", *small, ("read", "streaming", "naive"))
                sections.append(table(rows, params * 2 / 1e9, f"{params / 1e9:.2f}B params ({small[0]}+"
                                      f"{small[1]} layers), 3 inputs, bf16"))
                everything += rows
    finally:
        shutil.rmtree(root, ignore_errors=True)
    info = (f"{os.cpu_count()} CPU cores ({platform.machine()}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, torch.compile kernels "
            f"{'off' if os.environ.get('PGM_MERGE_COMPILE', '1') in ('0', 'false', 'no', 'off') else 'on'}")
    print("\n\n".join(sections) + f"\n\nMachine: {info}.\n\nRaw:\n" + "\n".join(json.dumps(r) for r in everything))


if __name__ == "__main__":
    main()

"""One `pgm study` cell's model at 3B: the merge built in memory beside the merge written and reloaded
(issue #22, "Speed and memory": the per-cell cost at 3B).

Uses bench_merge.py's synthetic checkpoints (a base and two full "fine-tunes", bf16, the tensor names
and shapes of google/paligemma-3b-pt-224: 2.92B params, 5.85 GB each) and times, each as a whole
process after dropping the page cache, with wall time, CPU time and peak RSS:

  in memory   what `pgm study` does per grid point (study.run.StudyRun.load_merge): merge.driver.prepare,
              merge.tensors.merged_state_dict (TIES, density 0.3), then model.load.load_model with that
              state dict (bf16, unquantised); merge and load seconds reported apart
  written     `pgm merge ties --density 0.3 -o OUT` (the CLI process: merges and writes 5.85 GB), then a
              second process loading OUT with model.load.load_model (bf16): what a user's merge-then-
              `pgm eval --model-path OUT` loop pays per grid point before evaluating

Both sides then evaluate the same model the same way, so evaluation is left out. Quantisation is
left out too (--quantization none): it costs both sides the same and bitsandbytes' CPU kernels would
only add noise here.

    .venv/bin/python bench/bench_study_cell.py [--text-layers 18] [--vision-layers 27] [--workdir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_merge as B  # noqa: E402

LOAD = """
from paligemma_cli.config import ModelConfig
from paligemma_cli.model.load import load_model
"""

IN_MEMORY = LOAD + """
from paligemma_cli.merge.driver import MergeRequest, prepare
from paligemma_cli.merge.tensors import merged_state_dict
job = prepare(MergeRequest(base_model=FOLDERS[0], models=tuple(FOLDERS[1:]), mode="ties", density=0.3))
state, _ = merged_state_dict(job)
RESULT["merge_s"] = time.perf_counter() - T0
import resource
RESULT["peak_rss_after_merge_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
RESULT["state_gb"] = sum(t.numel() * t.element_size() for t in state.values()) / 1e9
model = load_model(ModelConfig(model_path=FOLDERS[0], quantization="none", compute_dtype="bf16"),
                   for_training=False, state_dict=state)
del state
RESULT["load_s"] = time.perf_counter() - T0 - RESULT["merge_s"]
RESULT["params"] = sum(p.numel() for p in model.parameters())
"""

LOAD_WRITTEN = LOAD + """
model = load_model(ModelConfig(model_path=OUT, quantization="none", compute_dtype="bf16"), for_training=False)
RESULT["load_s"] = time.perf_counter() - T0
RESULT["params"] = sum(p.numel() for p in model.parameters())
"""


def pgm_merge(folders: list[Path], out: Path) -> dict:
    """`pgm merge ties` as the user runs it: the CLI in its own process."""
    B.drop_cache(*folders)
    cmd = [sys.executable, "-m", "paligemma_cli", "merge", "ties", "--base-model", str(folders[0]),
           *[x for f in folders[1:] for x in ("--model", str(f))], "--density", "0.3", "-o", str(out)]
    env = {"PYTHONPATH": str(ROOT), "TERM": "dumb", "HF_HUB_OFFLINE": "1"}
    result, output, code = B.run_process(cmd, B._limit(), env)
    if code != 0:
        raise SystemExit(f"pgm merge failed ({code}):\n{output[-3000:]}")
    result["variant"] = "written: pgm merge ties -o OUT"
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-layers", type=int, default=18)
    ap.add_argument("--vision-layers", type=int, default=27)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    args = ap.parse_args()
    B.CHILD.update(in_memory=IN_MEMORY, load_written=LOAD_WRITTEN)
    root = Path(tempfile.mkdtemp(prefix="pgm-bench-study-cell-", dir=args.workdir))
    try:
        folders, params = B.generated(root, args.text_layers, args.vision_layers)
        out = root / "merged"
        rows = []
        row = B.run_variant("in_memory", folders, out, B._limit())
        row["variant"] = "in memory: merged_state_dict + load_model(state_dict=)"
        rows.append(row)
        rows.append(pgm_merge(folders, out))
        B.drop_cache(out)
        row = B.run_variant("load_written", folders, out, B._limit())
        row["variant"] = "written: load_model(OUT)"
        rows.append(row)
        for r in rows:
            print(json.dumps(r), flush=True)
        memory, merge, load = rows
        written = merge["process_s"] + load["process_s"]
        size = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 1e9
        print(f"\n| {params / 1e9:.2f}B params, 3 inputs, bf16 | wall (s) | CPU (s) | peak RSS (GB) |\n|---|---:|---:|---:|")
        print(f"| in memory (1 process: merge {memory['merge_s']:.0f} s + load {memory['load_s']:.0f} s) | "
              f"{memory['process_s']:.1f} | {memory['cpu_s']:.0f} | {memory['peak_rss_gb']:.2f} |")
        print(f"| written: `pgm merge ties` ({size:.2f} GB written) | {merge['process_s']:.1f} | {merge['cpu_s']:.0f} | "
              f"{merge['peak_rss_gb']:.2f} |")
        print(f"| written: reload it (load_model, {load['load_s']:.0f} s inside) | {load['process_s']:.1f} | "
              f"{load['cpu_s']:.0f} | {load['peak_rss_gb']:.2f} |")
        print(f"| written, total | {written:.1f} | | |")
        print(f"\nper cell: in memory {memory['process_s']:.1f} s vs written + reloaded {written:.1f} s "
              f"({written / memory['process_s']:.2f}x); same parameter count: {memory['params'] == load['params']}. "
              f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}).")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

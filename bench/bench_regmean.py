"""RegMean's merge step beside TIES on PaliGemma-3B-shaped checkpoints, whole processes, one run.

Uses bench_merge.py's synthetic checkpoints (a base and two "fine-tunes", bf16, the tensor names and
shapes of google/paligemma-3b-pt-224) with `--text-layers` Gemma decoder layers (default 2 of 18)
and `--vision-layers` SigLIP layers, and per expert a Gram matrix for every language-model linear
layer (a positive diagonal plus a rank-64 Y^T Y; a 16384-input down_proj Gram is 1 GB in float32),
stored as `pgm merge regmean` stores its calibration (merge.calibrate.GramStore). Then, each in its
own process after dropping the page cache, with wall time, CPU time and peak RSS:

  pgm ties      paligemma_cli.merge.driver.merge, density 0.3 (cold: empty torch.compile cache, then warm)
  pgm regmean   the same merge stream with the Grams as side inputs (merge.tensors.MergeStream,
                written with merge.writer.ShardedWriter, as the driver writes): reading, the float64
                solves and writing; calibration (running each expert on its data) is excluded: it is
                a forward pass over N examples per expert, which this CPU cannot do at 3B in useful time

    .venv/bin/python bench/bench_regmean.py [--text-layers 2] [--vision-layers 0] [--workdir /tmp] [--device cpu]
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

REGMEAN_CHILD = """
from paligemma_cli.merge.calibrate import GramStore
from paligemma_cli.merge.driver import MergeRequest, prepare
from paligemma_cli.merge.regmean import RegMeanGrams
from paligemma_cli.merge.tensors import MergeStream
from paligemma_cli.merge.writer import ShardedWriter
job = prepare(MergeRequest(base_model=FOLDERS[0], models=tuple(FOLDERS[1:]), mode="regmean",
                           calibrate=("vqav2=" + FOLDERS[0], "gqa=" + FOLDERS[0])))
stores = [GramStore.open(Path(OUT).parent / f"grams-{i}") for i in range(len(FOLDERS) - 1)]

def side(name):
    grams = [s.get(name) for s in stores]
    return None if all(g is None for g in grams) else RegMeanGrams(grams, job.params.regmean_alpha)

job.side_inputs = side
Path(OUT).mkdir(parents=True, exist_ok=True)
writer = ShardedWriter(Path(OUT), [(k, i.shape, i.dtype) for k, i in job.base.items()])
stream = MergeStream(job)
for key, chunk, _ in stream.chunks():
    writer.write(key, chunk)
writer.close()
RESULT["device"] = "cpu"
"""


def make_grams(root: Path, folders: list[Path], seed: int = 0) -> float:
    """A Gram per language linear layer and expert, saved as the calibration would; returns GB per expert."""
    import torch

    from paligemma_cli.merge.calibrate import GramStore, layer_key
    from paligemma_cli.merge.sources import module_name, safetensors_header

    base = safetensors_header(folders[0], "bench")
    linear = [(k, i.shape) for k, i in base.items() if ".layers." in k and "language_model" in k
              and len(i.shape) == 2 and k.endswith("proj.weight")]
    size = 0
    for e in range(len(folders) - 1):
        store, gen = GramStore(root / f"grams-{e}"), torch.Generator().manual_seed(seed + e)
        for key, shape in linear:
            y = torch.randn(64, shape[1], generator=gen)  # positive definite: a diagonal plus a rank-64 part
            gram = y.T @ y
            gram.diagonal().add_(torch.rand(shape[1], generator=gen) + 1.0)
            store.add({layer_key(module_name(key)): gram})
            size += shape[1] ** 2 * 4 if e == 0 else 0
    return size / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--vision-layers", type=int, default=0)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    args = ap.parse_args()
    B.CHILD["regmean"] = REGMEAN_CHILD
    root = Path(tempfile.mkdtemp(prefix="pgm-bench-regmean-", dir=args.workdir))
    try:
        folders, params = B.generated(root, args.text_layers, args.vision_layers)
        gb = make_grams(root, folders)
        print(f"Grams: {gb:.2f} GB per expert", flush=True)
        cache = {"TORCHINDUCTOR_CACHE_DIR": str(root / "inductor-cache")}
        rows: list[dict] = []
        for name, mode, label in [("streaming", "ties", " (cold)"), ("streaming", "ties", " (warm)"),
                                  ("regmean", "regmean", "")]:
            load = os.getloadavg()[0]
            row = B.run_variant(name, folders, root / f"out-{mode}", B._limit(), mode, cache)
            row["variant"] = f"pgm {mode}{label}"
            B._record(rows, row, params, load)
            shutil.rmtree(root / f"out-{mode}", ignore_errors=True)
        warm = next(r for r in rows if r["variant"] == "pgm ties (warm)")
        label = f"{params / 1e9:.2f}B params ({args.text_layers} text + {args.vision_layers} vision layers), 3 inputs, bf16"
        print(f"\n| {label} | wall (s) | x pgm ties (warm) | CPU (s) | peak RSS (GB) |\n|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['variant']} | {r['process_s']:.1f} | {r['process_s'] / warm['process_s']:.2f} | "
                  f"{r['cpu_s']:.0f} | {r['peak_rss_gb']:.2f} |")
        print(f"\nGrams per expert: {gb:.2f} GB. Machine: {os.cpu_count()} CPU cores ({platform.machine()}).")
        print("\nRaw:\n" + "\n".join(json.dumps(r) for r in rows))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The input pipeline: length-grouped batches sharded over processes, and an image failing in a worker."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest
import torch

from paligemma_cli.model.loader import EpochSampler, LengthGroupedSampler


class Keys(torch.utils.data.Dataset):
    """Each item is its own (epoch, index) key."""

    def __getitem__(self, key):
        return key


def shard_batches(sampler, batch_size: int, epoch: int, processes: int = 2) -> list[list[list[tuple]]]:
    """Per process, the batches of keys it gets in `epoch`, sharded by accelerate as `accelerate launch` does."""
    from accelerate.data_loader import prepare_data_loader

    out = []
    for rank in range(processes):
        loader = torch.utils.data.DataLoader(Keys(), batch_size=batch_size, sampler=sampler, collate_fn=list)
        shard = prepare_data_loader(loader, num_processes=processes, process_index=rank, put_on_device=False)
        shard.set_epoch(epoch)
        out.append([batch for batch in shard])
    return out


def padding(batches: list[list[tuple]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for _, i in b) * len(b) - sum(lengths[i] for _, i in b) for b in batches)


def test_length_grouped_batches_visit_every_example_once_per_epoch_over_two_shards():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(1, 4), rng.randint(1, 40)]) for _ in range(96)]
    n, batch_size = len(lengths), 4  # 96 = 12 batches per process: no padding round by accelerate

    seen_orders = []
    for epoch in (0, 1):
        shards = shard_batches(LengthGroupedSampler(lengths, batch_size, seed=7), batch_size, epoch)
        # The same seed and epoch give the same shards (a resumed run meets the same batches).
        assert shards == shard_batches(LengthGroupedSampler(lengths, batch_size, seed=7), batch_size, epoch)
        assert [len(s) for s in shards] == [12, 12]
        keys = [key for shard in shards for batch in shard for key in batch]
        assert all(b and len(b) == batch_size for s in shards for b in s)
        # Together the two shards hold every example exactly once, tagged with this epoch.
        assert Counter(i for _, i in keys) == Counter(range(n))
        assert {e for e, _ in keys} == {epoch}
        seen_orders.append([i for _, i in keys])
        # Grouped: far less padding than the same examples in plain random order.
        grouped = padding([b for s in shards for b in s], lengths)
        plain = padding([b for s in shard_batches(EpochSampler(n, 7), batch_size, epoch) for b in s], lengths)
        assert grouped * 3 < plain, (grouped, plain)
    assert seen_orders[0] != seen_orders[1]  # a new draw each epoch


@pytest.mark.slow
def test_a_corrupt_image_met_in_a_worker_is_one_error_line_naming_it(synthetic_data, tiny_model_dir, tmp_path):
    """A JPEG cut inside its scan data passes the start-up header check and fails when a worker
    decodes it, at the 4th micro-batch: steps 1-3 are checkpointed and kept."""
    from paligemma_cli.config import DataConfig
    from paligemma_cli.tasks.sources import load_examples
    from paligemma_cli.tasks import get_task
    from tests.train.test_resume import pgm_env

    data = synthetic_data("vqav2", 7)
    examples = load_examples(get_task("vqav2"), DataConfig(data_root=data), "train")
    order = EpochSampler(len(examples), 42).order()  # pgm train's first epoch at the default --seed
    first_three = {examples[i].image for i in order[:3]}
    position = next(p for p in range(3, len(order)) if examples[order[p]].image not in first_three)
    bad = examples[order[position]].image
    original = bad.read_bytes()
    try:
        bad.write_bytes(original[:original.index(b"\xff\xda") + 20])  # header and 20 bytes of scan
        out = tmp_path / "run"
        proc = subprocess.run(
            [sys.executable, "-m", "paligemma_cli", "train", "vqav2", "--model-path", "tiny", "--data-root",
             str(data), "--output-dir", str(out), "--batch-size", "1", "--gradient-accumulation-steps", "1",
             "--save-steps", "1", "--dataloader-workers", "2", "--no-group-by-length"],
            env=pgm_env(), capture_output=True, text=True, timeout=300)
    finally:
        bad.write_bytes(original)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert "Traceback" not in text and text.count("Error:") == 1, text
    error = " ".join(text[text.index("Error:"):].split())  # rich may wrap the line
    assert f"Cannot read image {bad}: image file is truncated" in error, error
    assert f"step-{position:08d}, is kept" in error and "--resume" in error, error
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1] == f"step-{position:08d}"

"""The loss curve PNG written next to the adapter."""

from __future__ import annotations

import json
from pathlib import Path


def plot_loss_curve(log_path: Path, out_path: Path) -> bool:
    """Plot loss (and eval metrics, if any) from train_log.jsonl; False when there is nothing to plot."""
    if not log_path.exists():
        return False
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    points = [(r["step"], r["loss"]) for r in records if "loss" in r]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([p[0] for p in points], [p[1] for p in points], color="#1f77b4", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(log_path.parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return True

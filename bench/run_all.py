"""`make bench`: run every benchmark in bench/ in turn (each prints its own side-by-side table).

The merge benchmark writes ~12 GB of synthetic 3B-shaped checkpoints to a temp dir and takes
minutes (beside mergekit, which it installs into a throw-away venv, about an hour on 2 cores); the
scoring benchmark writes ~2.5 GB of official-format JSON (GQA val at its real size) and the official
GQA loop it runs beside pgm peaks at ~11 GB of RAM; study_cell writes three 5.85 GB checkpoints and its
in-memory side holds a 3B merge twice in RAM; regmean writes ~2 GB of Gram matrices per expert. Pass names to run a subset:
`python bench/run_all.py metrics generate`.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ALL = ["metrics", "generate", "train", "merge", "scoring", "startup", "study", "study_cell", "regmean"]

if __name__ == "__main__":
    chosen = sys.argv[1:] or ALL
    failed = []
    for name in chosen:
        script = HERE / f"bench_{name}.py"
        print(f"\n=== {script.name} ===", flush=True)
        if subprocess.run([sys.executable, str(script)]).returncode != 0:
            failed.append(name)
    sys.exit(1 if failed else 0)

"""Regenerate the README's figures under docs/img/ from the examples.

python docs/make_figures.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {
    # (example, args): {figure tag in <log_dir>/sanity/<tag>_epochNNN.png (one per run, the last drawn): docs/img/ name}
    ("normalize_bug.py",): {
        "batch_stats_train_vs_val_histograms": "input_histograms_normalize_bug.png",
        "batch_stats_train_vs_val_samples": "sample_grid_normalize_bug.png",
    },
    ("healthy.py",): {
        "batch_stats_train_vs_val_samples": "sample_grid_healthy.png",
        "confusion_val_confusion_matrix": "confusion_matrix_healthy.png",
    },
    ("stuck_at_chance.py",): {"confusion_val_confusion_matrix": "confusion_matrix_stuck_at_chance.png"},
    ("gradient_bug.py",): {"gradient_flow_train_layers": "gradient_flow_gradient_bug.png"},
}


def main() -> None:
    target = ROOT / "docs" / "img"
    target.mkdir(parents=True, exist_ok=True)
    for (example, *args), wanted in FIGURES.items():
        with tempfile.TemporaryDirectory() as log_dir:
            command = [sys.executable, str(ROOT / "examples" / example), "--log-dir", log_dir, *args]
            subprocess.run(command, check=True, capture_output=True)
            produced = {path.stem.rsplit("_epoch", 1)[0]: path for path in Path(log_dir).glob("**/sanity/*.png")}
            for stem, name in wanted.items():
                shutil.copyfile(produced[stem], target / name)
                print(f"docs/img/{name}")


if __name__ == "__main__":
    main()

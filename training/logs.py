"""Training logs: metrics.csv (one row per logged step), optional TensorBoard, the loss-curve PNG."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

_TB_NOTE_SHOWN = False


class CSVLogger:
    """Append rows of scalars to a CSV; a new key rewrites the file with the wider header."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        self.fields: list[str] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                # Rows logged after the checkpoint we resume from are dropped: they get redone.
                self.rows = [r for r in reader if int(float(r["step"])) <= resume_step]
            self._rewrite()
        elif self.path.exists():
            self.path.unlink()

    def log(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **values}
        new = [k for k in row if k not in self.fields]
        self.rows.append(row)
        if new or not self.path.exists():
            self.fields += new
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(row)

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(self.rows)


def read_csv(path: Path) -> list[dict[str, float]]:
    """metrics.csv as a list of {column: float} (empty cells left out)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


class TensorBoardLogger:
    """torch.utils.tensorboard when the ``tensorboard`` package is installed; else a no-op."""

    def __init__(self, log_dir: Path, note: Any = print, enabled: bool = True) -> None:
        global _TB_NOTE_SHOWN
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if not _TB_NOTE_SHOWN:
                note("tensorboard is not installed; TensorBoard logs skipped (metrics.csv has them)")
                _TB_NOTE_SHOWN = True
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (tmp + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def plot_curves(
    rows: list[dict[str, float]],
    eval_history: list[dict[str, float]],
    out_png: Path,
    title: str,
    eval_metric: str | None = None,
) -> Path:
    """loss.png: the training losses against step (log scale when positive) and the held-out
    metric on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    steps = [r["step"] for r in rows]
    keys = [k for k in (rows[0] if rows else {}) if k.startswith("loss")]
    for k in keys:
        ys = [r.get(k, math.nan) for r in rows]
        ax.plot(steps, ys, label=k, lw=1.5 if k == "loss" else 0.8)
    ys_all = [r[k] for r in rows for k in keys if k in r]
    if ys_all and min(ys_all) > 0 and max(ys_all) > 20 * min(ys_all):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if eval_metric and any(eval_metric in e for e in eval_history):
        ax2 = ax.twinx()
        pts = [(e["step"], e[eval_metric]) for e in eval_history if eval_metric in e]
        ax2.plot(*zip(*pts, strict=True), "o-", color="black", ms=3, label=f"held-out {eval_metric}")
        ax2.set_ylabel(f"held-out {eval_metric}")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png

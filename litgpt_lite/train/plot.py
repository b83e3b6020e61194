"""`litgpt_lite plot <out_dir>`: the training and validation loss of a run as a PNG."""

from __future__ import annotations

from pathlib import Path

from litgpt_lite.errors import UserError
from litgpt_lite.train.loggers import CSV_NAME, read_metrics


def plot(out_dir: Path, output: Path | None = None) -> Path:
    """Draw the loss curves of a training run.

    Args:
        out_dir: the run's out_dir (it holds logs/metrics.csv).
        output: the PNG to write; defaults to out_dir/loss.png.
    """
    out_dir = Path(out_dir)
    path = out_dir / "logs" / CSV_NAME
    if not path.is_file():
        raise UserError(f"{out_dir} has no logs/{CSV_NAME}: pass the out_dir of a training run")
    rows = read_metrics(path)
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss")]
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss")]
    if not train and not val:
        raise UserError(f"{path} has no loss values yet: train for a few steps first")
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(out_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    output = Path(output) if output is not None else out_dir / "loss.png"
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)
    print(f"Wrote {output}")
    return output

"""Metrics sinks: a CSV file (always written; `plot` reads it), TensorBoard, or Weights & Biases."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from litgpt_lite.errors import UserError

LOGGER_NAMES = ("csv", "tensorboard", "wandb")
CSV_NAME = "metrics.csv"
FIELDS = ("step", "epoch", "tokens", "loss", "lr", "tokens_per_sec", "mfu", "val_loss", "val_ppl")


class CSVMetrics:
    """Appends one row per logged step to out_dir/logs/metrics.csv; on resume drops rows after the resumed step.

    The columns are `FIELDS`, then any other numeric metric a recipe logs (DPO's rewards/...), added when it first
    appears (the file is rewritten once with the wider header)."""

    def __init__(self, out_dir: Path, resume_step: int | None) -> None:
        self.path = Path(out_dir) / "logs" / CSV_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = read_metrics(self.path) if resume_step is not None and self.path.is_file() else []
        kept = [row for row in kept if int(row["step"]) <= (resume_step or 0)]
        self.fields = list(FIELDS) + [k for k in (kept[0] if kept else {}) if k not in FIELDS]
        self._rewrite(kept)

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows({k: row.get(k, "") for k in self.fields} for row in rows)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        new = [k for k, v in metrics.items() if k not in self.fields and isinstance(v, (int, float))]
        if new:
            rows = read_metrics(self.path)
            self.fields += new
            self._rewrite(rows)
        row = {k: metrics.get(k, "") for k in self.fields}
        row["step"] = step
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)

    def close(self) -> None:
        pass


def read_metrics(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


class TensorBoardMetrics:
    def __init__(self, out_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--logger_name tensorboard needs tensorboard: pip install tensorboard") from None
        self.writer = SummaryWriter(str(Path(out_dir) / "logs" / "tensorboard"))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "step":
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbMetrics:
    def __init__(self, out_dir: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise UserError("--logger_name wandb needs wandb: pip install wandb") from None
        self.run = wandb.init(dir=str(out_dir), config=config, name=Path(out_dir).name)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log({k: v for k, v in metrics.items() if k != "step"}, step=step)

    def close(self) -> None:
        self.run.finish()


class Metrics:
    """Fan-out to the CSV file plus the chosen logger; only rank 0 writes."""

    def __init__(
        self, out_dir: Path, logger_name: str, resume_step: int | None, config: dict[str, Any], enabled: bool = True
    ) -> None:
        check_logger_name(logger_name)
        self.sinks: list[Any] = []
        if not enabled:
            return
        self.sinks.append(CSVMetrics(out_dir, resume_step))
        if logger_name == "tensorboard":
            self.sinks.append(TensorBoardMetrics(out_dir))
        elif logger_name == "wandb":
            self.sinks.append(WandbMetrics(out_dir, config))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for sink in self.sinks:
            sink.log(metrics, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def check_logger_name(name: str) -> None:
    if name not in LOGGER_NAMES:
        raise UserError(f"Unknown --logger_name {name!r}: choose one of {', '.join(LOGGER_NAMES)}")

"""Run logging: TensorBoard scalars, a JSONL metrics file and a progress bar with rate and ETA.

One `RunLogger` per run serves both loops. Metric keys are namespaced (`train/loss`,
`eval/normalized_score`, `perf/steps_per_s`). On resume from step N, lines of metrics.jsonl
logged after N by the interrupted run are dropped, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from seqrl.checkpoint import write_text_atomic

METRICS_FILE = "metrics.jsonl"


def _scalar(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """Every record of a run's metrics.jsonl, in order.

    A torn last line (the process was killed while writing it) is skipped; a damaged line
    before it is a one-line `ValueError` naming the line.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: has this run logged anything yet?")
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError):
            if number == len(lines):  # no newline after it: a torn last write
                break
            raise ValueError(
                f"{path}: line {number} is not a JSON record. Fix: delete that line (the "
                "checkpoints do not depend on this file)"
            ) from None
        records.append(record)
    return records


class RunLogger:
    """Writes metrics to TensorBoard (`RUN_DIR/tb`) and `RUN_DIR/metrics.jsonl`; shows progress.

    Args:
        run_dir: the run directory.
        total_steps: the step count the progress bar and ETA run to.
        start_step: the step training (re)starts after; 0 for a new run.
        unit: what a step is ("update" offline, "env-step" online).
        progress: show the tqdm bar (rate and ETA); off in tests.
    """

    def __init__(
        self,
        run_dir: str | Path,
        total_steps: int,
        start_step: int = 0,
        unit: str = "step",
        progress: bool = True,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        self._jsonl = open(self.run_dir / METRICS_FILE, "a")  # noqa: SIM115  (closed in close())
        self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_step + 1)
        self._bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit=unit,
            dynamic_ncols=True,
            disable=not progress,
        )
        self._last_step, self._last_time = start_step, time.perf_counter()

    def _truncate_after(self, step: int) -> None:
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return
        kept = [r for r in read_metrics(self.run_dir) if r.get("step", 0) <= step]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))

    def advance(self, step: int) -> None:
        """Move the progress bar to `step`."""
        self._bar.update(step - self._bar.n)

    def log(self, step: int, metrics: dict[str, Any], rate: bool = False) -> None:
        """Record `metrics` at `step`; with `rate`, add `perf/steps_per_s` since the last call."""
        record: dict[str, float] = {}
        for key, value in metrics.items():
            number = _scalar(value)
            if number is not None:
                record[key] = number
        if rate:
            now = time.perf_counter()
            if step > self._last_step:
                record["perf/steps_per_s"] = (step - self._last_step) / max(
                    now - self._last_time, 1e-9
                )
            self._last_step, self._last_time = step, now
        for key, number in record.items():
            if math.isfinite(number):
                self._writer.add_scalar(key, number, step)
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **record}) + "\n")
        self._jsonl.flush()
        shown = {k.split("/")[-1]: f"{v:.4g}" for k, v in record.items() if k.startswith("train/")}
        if "eval/normalized_score" in record:
            shown["score"] = f"{record['eval/normalized_score']:.1f}"
        elif "eval/return_mean" in record:
            shown["return"] = f"{record['eval/return_mean']:.1f}"
        if shown:
            self._bar.set_postfix(shown, refresh=False)
        self.advance(step)

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        self._bar.write(message)

    def close(self) -> None:
        self._bar.close()
        self._writer.close()
        self._jsonl.close()

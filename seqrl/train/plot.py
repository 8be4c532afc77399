"""`seqrl plot RUN_DIR`: a PNG of a run's training and evaluation curves from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from seqrl.train.logging import read_metrics

PANELS = (
    ("train/loss", "training loss"),
    ("eval/normalized_score", "normalized score"),
    ("eval/return_mean", "evaluation return"),
    ("perf/steps_per_s", "updates / s"),
)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's curves to `out` (default `RUN_DIR/curves.png`) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    panels = [(key, title) for key, title in PANELS if any(key in r for r in records)]
    if not panels:
        raise ValueError(f"{run_dir}/metrics.jsonl has no train/ or eval/ metrics to plot yet")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for axis, (key, title) in zip(axes[0], panels):
        points = [(r["step"], r[key]) for r in records if key in r]
        steps, values = zip(*points)
        axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3)
        std_key = key.replace("_mean", "_std") if key.endswith("_mean") else key + "_std"
        spread = [(r["step"], r[key], r[std_key]) for r in records if key in r and std_key in r]
        if spread:
            s, m, d = zip(*spread)
            axis.fill_between(
                s, [a - b for a, b in zip(m, d)], [a + b for a, b in zip(m, d)], alpha=0.2
            )
        axis.set_title(title)
        axis.set_xlabel("update")
        axis.grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = Path(out) if out is not None else run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

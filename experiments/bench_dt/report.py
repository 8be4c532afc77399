"""The Markdown table and the learning-curve PNG of `bench_dt.py`, from its raw results dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# profiler op name -> the category the report groups it under
CATEGORIES = (
    ("matrix multiplies (mm, addmm, bmm)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul")),
    ("attention kernels (SDPA, softmax)", ("scaled_dot_product", "softmax", "_efficient_attention")),
    ("dropout (bernoulli, masks)", ("bernoulli", "dropout", "native_dropout")),
    ("ReLU fwd/bwd", ("clamp_min", "threshold_backward", "aten::relu")),
    ("LayerNorm fwd/bwd", ("layer_norm",)),
    ("optimizer step (AdamW, clip)", ("Optimizer.", "_foreach", "addcdiv", "lerp", "aten::sqrt", "norm")),
    ("copies, cat, masks", ("copy_", "aten::cat", "masked_fill", "aten::where", "aten::any", "aten::all", "aten::stack", "index")),
    ("tanh, loss, other elementwise", ("aten::mul", "aten::add", "aten::sub", "aten::div", "tanh", "mse", "aten::sum", "aten::mean", "pow")),
)  # fmt: skip


def categorize(ops: list[list[Any]]) -> dict[str, float]:
    """[[name, self ms per step, calls per step], ...] -> {category: ms per step}."""
    totals: dict[str, float] = {name: 0.0 for name, _ in CATEGORIES}
    totals["other"] = 0.0
    for name, ms, _ in ops:
        for category, needles in CATEGORIES:
            if any(needle in name for needle in needles):
                totals[category] += ms
                break
        else:
            totals["other"] += ms
    return totals


def _fmt(mean: float, std: float, digits: int = 1) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def throughput_section(tp: dict[str, Any]) -> list[str]:
    ratio = tp["ratio"]
    libs = tp.get("libraries", ["seqrl", "d3rlpy"])
    labels = {
        "seqrl": "seqrl (fp32)",
        "seqrl-auto": "seqrl, `agent.precision=auto` (the default)",
        "seqrl-bf16": "seqrl, `agent.precision=bf16` (autocast)",
        "d3rlpy": "d3rlpy (fp32)",
    }
    lines = [
        "### Training throughput (gradient steps / s, same run, interleaved)",
        "",
        f"{tp['blocks']} blocks of {tp['block_steps']} steps per row after {tp['warmup']} "
        f"warm-up steps each, rows taking turns block by block; {tp['threads']} torch "
        "thread(s) each. A step is what each library's training loop does per update: sample "
        "64 windows of 20 steps, forward, backward, clip, AdamW.",
        "",
        "| library | steps / s | seconds / step | vs d3rlpy | parameters |",
        "|---|---|---|---|---|",
    ]
    d3 = tp["d3rlpy"]["steps_per_s"]
    for lib in libs:
        entry = tp[lib]
        lines.append(
            f"| {labels.get(lib, lib)} | {entry['steps_per_s']:.2f} | "
            f"{1 / entry['steps_per_s']:.3f} | {entry['steps_per_s'] / d3:.2f}x | "
            f"{entry['parameters']:,} |"
        )
    lines += [
        "",
        f"seqrl / d3rlpy in fp32 = **{ratio:.2f}x** (per-block ratios "
        f"{', '.join(f'{r:.2f}' for r in tp['block_ratios'])}). Target 1.2x: "
        f"{'met' if ratio >= 1.2 else '**missed**'} in fp32.",
    ]
    if "ratio_auto" in tp:
        auto, fast = tp["ratio_auto"], tp.get("fast_bf16")
        mode = "on: this CPU has fast bf16" if fast else "off: no fast bf16 on this CPU"
        lines.append(
            f"With `precision=auto` (bf16 autocast {mode}): **{auto:.2f}x** (per block "
            f"{', '.join(f'{r:.2f}' for r in tp['block_ratios_auto'])}). Target 1.5x where bf16 "
            f"is fast: {'met' if auto >= 1.5 else '**missed**' if fast else 'not applicable'}."
        )
    elif "ratio_bf16" in tp:
        bf16 = tp["ratio_bf16"]
        lines.append(
            f"With seqrl's bf16 autocast: **{bf16:.2f}x** (per block "
            f"{', '.join(f'{r:.2f}' for r in tp['block_ratios_bf16'])}); "
            f"{'met' if bf16 >= 1.5 else 'missed'} that way (d3rlpy has no CPU mixed-precision "
            "option; the score runs below are fp32)."
        )
    lines.append("")
    return lines


def profile_section(profile: dict[str, Any]) -> list[str]:
    seqrl, d3 = categorize(profile["seqrl"]["ops"]), categorize(profile["d3rlpy"]["ops"])
    lines = [
        f"### Where a training step's time goes (torch.profiler, self CPU ms per step, "
        f"{profile['steps']} steps)",
        "",
        "| category | seqrl | d3rlpy |",
        "|---|---|---|",
    ]
    for category in [name for name, _ in CATEGORIES] + ["other"]:
        lines.append(f"| {category} | {seqrl[category]:.1f} | {d3[category]:.1f} |")
    lines.append(
        f"| **total** | {profile['seqrl']['total_ms']:.1f} | {profile['d3rlpy']['total_ms']:.1f} |"
    )
    lines.append("")
    return lines


def speed_section(speed: dict[str, Any]) -> list[str]:
    rows = speed["rows"]
    rate = {r["key"]: r["env_steps"] / r["seconds"] for r in rows}
    base = rate["sequential"]
    lines = [
        f"### Evaluation throughput ({speed['episodes']} Hopper-v5 episodes per method)",
        "",
        f"Rounds of {speed['block']} episodes run every method in turn on the same episode seeds; "
        f"the N = {speed['extra_num_envs'][0]} rows then run all {speed['episodes']} episodes at "
        "once. Wall time includes stepping the MuJoCo envs; one torch thread. Speed-up = env "
        "steps / s over (b)'s (the cache-mode and sliding-window rows play different episodes).",
        "",
        "| method | model | envs | wall s | env steps | env steps / s | vs (b) | mean return |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['model']} | {r['num_envs']} | {r['seconds']:.1f} | "
            f"{r['env_steps']:,} | {rate[r['key']]:.0f} | {rate[r['key']] / base:.1f}x | "
            f"{r['return_mean']:.1f} |"
        )
    window = max(v / base for k, v in rate.items() if k.startswith("seqrl-window"))
    best_key = max((k for k in rate if k.startswith(("seqrl-", "sliding-"))), key=rate.get)
    best = rate[best_key] / base
    lines += [
        "",
        f"Speed-up of (a) over (b): window mode **{window:.1f}x**, best (a) row ({best_key}) "
        f"**{best:.1f}x**. Target 20x: {'met' if best >= 20 else '**missed**'}. "
        f"Window mode and (b) compute the same function: largest return difference over the "
        f"{speed['episodes']} episodes {speed['window_vs_sequential_max_return_diff']:.2g}.",
    ]
    if speed.get("hf_max_abs_diff") is not None:
        lines.append(
            f"HF model with seqrl's weights ({speed.get('hf_attention', '?')} attention): max "
            f"|action difference| {speed['hf_max_abs_diff']:.1e} on random windows."
        )
    lines.append("")
    if speed.get("overhead"):
        lines += overhead_section(speed["overhead"])
    return lines


def overhead_section(overhead: dict[str, Any]) -> list[str]:
    """The policy's time in `act` over MuJoCo's in `env.step`, same loop (issue 16: <= 0.30)."""
    from bench_rollout import overhead_table  # experiments/ (bench_dt.py's folder)

    lines = [
        f"### Policy overhead at {overhead['num_envs']} Hopper-v5 envs (target <= 0.30)",
        "",
        f"The trained DTs and a constant policy (MuJoCo alone, the ceiling) step the same "
        f"{overhead['num_envs']} envs in {overhead['rounds']} interleaved rounds of "
        f"{overhead['steps_per_round']} vector steps, at torch threads "
        f"{', '.join(map(str, overhead['threads']))} (experiments/bench_rollout.py's "
        "measurement).",
        "",
        *overhead_table(overhead),
    ]
    lines.append("")
    return lines


def scores_section(scores: dict[str, Any], dataset_mean: float) -> list[str]:
    common = min(variant["steps"] for variant in scores["variants"])
    lines = [
        f"### Normalized scores ({scores['budget']})",
        "",
        f"| variant | gradient steps | normalized score, final (mean ± std over seeds) | "
        f"per seed | return | score at step {common} |",
        "|---|---|---|---|---|---|",
    ]
    for variant in scores["variants"]:
        runs = variant["runs"]
        if not runs:
            continue
        norm = np.array([run["final"]["normalized_mean"] for run in runs])
        ret = np.array([run["final"]["return_mean"] for run in runs])
        early = np.array(
            [p["normalized_mean"] for run in runs for p in run["curve"] if p["step"] == common]
        )
        early_text = _fmt(early.mean(), early.std()) if early.size else "–"
        lines.append(
            f"| {variant['label']} | {variant['steps']} | **{_fmt(norm.mean(), norm.std())}** | "
            f"{', '.join(f'{x:.1f}' for x in norm)} | {_fmt(ret.mean(), ret.std(), 0)} | "
            f"{early_text} |"
        )
    lines += [
        "",
        f"Dataset mean normalized return: {dataset_mean:.1f}. Each seed's score is the mean over "
        f"{scores['eval_episodes']} episodes (seeds {scores['eval_seed']}..."
        f"{scores['eval_seed'] + scores['eval_episodes'] - 1}, target return "
        f"{scores['target_return']:g}) after the run's last update.",
        "",
    ]
    return lines


def write_table(results: dict[str, Any], path: Path) -> None:
    meta = results["meta"]
    lines = [
        "## Decision Transformer: seqrl vs d3rlpy vs Hugging Face",
        "",
        f"Machine: {meta['machine']}. Torch {meta['torch']} (CPU), d3rlpy {meta.get('d3rlpy', '?')}, "
        f"transformers {meta.get('transformers', 'not installed')}. {meta['date']}. "
        f"Load average at start / end: {meta['load_start']} / {meta.get('load_end', '?')}.",
        "",
    ]
    commands = meta.get("stage_commands", {})
    seconds = meta["stage_seconds"]
    if len(set(commands.values())) <= 1:
        command = next(iter(commands.values()), meta.get("command", "?"))
        lines.append(f"Command: `{command}` ({meta['wall_minutes']:.1f} min wall time).")
    else:
        lines.append(f"Commands ({meta['wall_minutes']:.1f} min wall time in all):")
        lines.append("")
        for stage, command in commands.items():
            lines.append(f"- {stage} ({seconds[stage] / 60:.1f} min): `{command}`")
    lines.append("")
    if "throughput" in results:
        lines += throughput_section(results["throughput"])
    if "profile" in results:
        lines += profile_section(results["profile"])
    if "speed" in results:
        lines += speed_section(results["speed"])
    if "scores" in results:
        lines += scores_section(results["scores"], meta["dataset_normalized_mean"])
    path.write_text("\n".join(lines))


def plot_curves(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = results["scores"]
    fig, axis = plt.subplots(figsize=(7, 4.2))
    for variant in scores["variants"]:
        runs = [run for run in variant["runs"] if run["curve"]]
        if not runs:
            continue
        steps = [point["step"] for point in runs[0]["curve"]]
        values = np.array([[p["normalized_mean"] for p in run["curve"]] for run in runs])
        mean, std = values.mean(0), values.std(0)
        axis.plot(
            steps, mean, marker="o", markersize=3, label=f"{variant['label']} ({len(runs)} seeds)"
        )
        axis.fill_between(steps, mean - std, mean + std, alpha=0.2)
    dataset_mean = results["meta"]["dataset_normalized_mean"]
    axis.axhline(
        dataset_mean,
        color="gray",
        linestyle="--",
        linewidth=1,
        label=f"dataset mean ({dataset_mean:.1f})",
    )
    axis.set_xlabel("gradient step")
    axis.set_ylabel("normalized score")
    budget = scores["budget"].replace("; ", ";\n", 1)
    axis.set_title(
        f"DT on the shared Hopper medium data, mean ± std over seeds\n{budget}", fontsize=8
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

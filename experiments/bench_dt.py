"""Decision Transformer benchmark: seqrl against d3rlpy and Hugging Face on the shared Hopper data.

One command, five stages (issue 6):
1. setup: d3rlpy in its own venv under the output folder (it pins an older Gymnasium), driven
   through `bench_dt/d3rlpy_driver.py` over a pipe;
2. throughput: gradient steps / s of seqrl's DT and d3rlpy's DT, same model size, batch, context
   and data, in blocks alternating between the two (so machine load hits both alike), plus a
   torch.profiler breakdown of one step of each;
3. scores: seqrl DT and d3rlpy DT (and seqrl's sliding-window DT in cache mode and its xLSTM-
   backbone DT), `--seeds` seeds each, the same gradient-step budget, evaluated the same way
   (`seqrl.envs.evaluate`: Hopper-v5 episodes seeded 10000 + i, target return 3600), run as
   independent processes, `--workers` at a time;
4. speed: 100 evaluation episodes of one trained seqrl DT: (a) the batched policy in window and
   cache mode, (b) the reference-style sequential loop, (c) Hugging Face's
   DecisionTransformerModel with the same weights (if `transformers` imports);
5. report: `table.md`, `curves.png` and `results.json` in `--results`.

    export MINARI_DATASETS_PATH=$(cd ../shared/data/minari && pwd)    # or pass --data-dir
    .venv/bin/python experiments/bench_dt.py --quick                  # < 2 min, tiny budgets
    nice .venv/bin/python experiments/bench_dt.py > runs/bench_dt/full.log 2>&1   # ~70 min

Quick mode writes to runs/bench_dt/quick; full mode to runs/bench_dt/full and its table, PNG and
raw JSON to experiments/results/dt. Stages already done in the output folder are reused
(delete the folder, or pass --stages, to redo them).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; --threads sets torch's

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent / "bench_dt"))

from d3rlpy_client import D3rlpyPolicy, D3rlpyProcess, dt_settings, ensure_d3rlpy  # noqa: E402
from eval_loops import (  # noqa: E402
    hf_available,
    hf_model_from_seqrl,
    hf_step_fn,
    max_abs_difference,
    seqrl_step_fn,
    sequential_episodes,
)
from report import plot_curves, write_table  # noqa: E402

DATASET_ID = "seqrl-bench/hopper/medium-v0"
HDF5_NAME = "hopper-medium-d4rl.hdf5"  # the same episodes in D4RL's layout, read by d3rlpy
ENV_ID = "Hopper-v5"
EVAL_SEED = 10_000  # OfflineConfig.eval_seed: the loop's evaluation episodes
SPEED_SEED = 20_000
VARIANTS = {  # key -> (label, preset)
    "seqrl": ("seqrl DT", "experiments/dt/hopper-medium.yaml"),
    "d3rlpy": ("d3rlpy DT", "experiments/dt/hopper-medium.yaml"),
    "sliding": ("seqrl DT, window 13 / context 40, cache", "experiments/dt/hopper-medium-sliding.yaml"),
    "xlstm": ("seqrl DT, xLSTM backbone", "experiments/dt/hopper-medium-xlstm.yaml"),
}  # fmt: skip
STAGES = ("throughput", "scores", "speed")
COST_ORDER = ("sliding", "xlstm", "d3rlpy", "seqrl")  # slowest first, for the worker pool


@dataclass
class Budget:
    steps: int = 1000
    """Gradient steps per score run of seqrl's and d3rlpy's default DT (every seed)."""
    variant_steps: int = 500
    """Gradient steps per score run of the sliding-window and xLSTM DTs (2-3x dearer a step)."""
    warmup: int = 100
    """Linear learning-rate warm-up of every score run (the reference uses 10k of 100k)."""
    eval_every: int = 250
    """Evaluate (the learning-curve points) every this many steps."""
    eval_episodes: int = 20
    eval_num_envs: int = 20
    seeds: int = 3
    tp_warmup: int = 20
    """Untimed steps per library before the throughput blocks."""
    tp_blocks: int = 6
    tp_block_steps: int = 50
    profile_steps: int = 10
    speed_episodes: int = 100
    speed_block: int = 20
    """Episodes per interleaved round of the evaluation-speed stage (also its N for (a))."""
    speed_extra_envs: int = 100
    """N of the extra all-episodes-at-once rows of (a)."""


QUICK = Budget(
    steps=6, variant_steps=6, warmup=3, eval_every=3, eval_episodes=2, eval_num_envs=2, seeds=1,
    tp_warmup=2, tp_blocks=2, tp_block_steps=3, profile_steps=2,
    speed_episodes=4, speed_block=2, speed_extra_envs=4,
)  # fmt: skip


def log(message: str) -> None:
    print(f"[bench_dt {time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_steps(variant: str, budget: Budget) -> int:
    return budget.steps if variant in ("seqrl", "d3rlpy") else budget.variant_steps


def seqrl_config(variant: str, budget: Budget, seed: int) -> dict[str, Any]:
    """The resolved seqrl run config of a variant: its preset with the benchmark's budget."""
    from seqrl.train.runs import resolve_config

    steps = run_steps(variant, budget)
    overrides = [
        f"seed={seed}",
        f"agent.warmup_steps={budget.warmup}",
        f"train.steps={steps}",
        f"train.eval_every={budget.eval_every}",
        f"train.eval_episodes={budget.eval_episodes}",
        f"train.eval_num_envs={budget.eval_num_envs}",
        f"train.eval_seed={EVAL_SEED}",
        f"train.checkpoint_every={steps}",
        f"train.log_every={min(100, steps)}",
    ]
    return resolve_config("dt", DATASET_ID, REPO / VARIANTS[variant][1], overrides)


def reference_scores():
    from seqrl.buffers import load_dataset
    from seqrl.train.runs import reference_for

    store = load_dataset(DATASET_ID)
    reference = reference_for(store, ENV_ID)
    dataset_mean = float(np.mean(reference.normalize(store.episode_returns)))
    return store, reference, dataset_mean


# ---- stage 2: training throughput ------------------------------------------------------------


def stage_throughput(args: argparse.Namespace, budget: Budget, d3_python: Path) -> dict[str, Any]:
    from seqrl.agents import get_agent_entry
    from seqrl.agents.dt import fast_bf16
    from seqrl.config import from_dict
    from seqrl.envs import seed_everything
    from seqrl.train.runs import spec_for

    config = seqrl_config("seqrl", budget, seed=0)
    store, _, _ = reference_scores()
    entry = get_agent_entry("dt")
    spec = spec_for(store, ENV_ID)
    agents, samplers = {}, {}
    # seqrl in fp32 (the same arithmetic as d3rlpy) and with its default precision="auto"
    # (bf16 autocast where the hardware has fast bf16, detected; fp32 elsewhere)
    for name, precision in (("seqrl", "fp32"), ("seqrl-auto", "auto")):
        seed_everything(0)
        agent_config = from_dict(entry.config_cls, {**config["agent"], "precision": precision})
        agents[name] = entry.agent_cls(agent_config, spec, store.stats())
        samplers[name] = entry.make_sampler(agent_config, store, 0)

    def seqrl_steps(name: str, steps: int) -> float:
        agent, sampler = agents[name], samplers[name]
        begin = time.perf_counter()
        for _ in range(steps):
            agent.update(sampler.sample())
        return time.perf_counter() - begin

    hdf5 = args.data_dir / HDF5_NAME
    log_path = args.out / "d3rlpy-throughput.log"
    libs = ("seqrl", "seqrl-auto", "d3rlpy")
    with D3rlpyProcess(d3_python, args.threads, log_path) as d3:
        info = d3.call(
            "init", dataset=str(hdf5), seed=0, threads=args.threads, **dt_settings(config["agent"])
        )

        def steps_of(lib: str, steps: int) -> float:
            if lib == "d3rlpy":
                return d3.call("train", steps=steps)["seconds"]
            return seqrl_steps(lib, steps)

        for lib in libs:
            steps_of(lib, budget.tp_warmup)
        times: dict[str, list[float]] = {lib: [] for lib in libs}
        for block in range(budget.tp_blocks):
            for lib in libs:
                times[lib].append(steps_of(lib, budget.tp_block_steps))
            log(
                f"throughput block {block + 1}/{budget.tp_blocks}: "
                + ", ".join(f"{lib} {budget.tp_block_steps / times[lib][-1]:.2f}" for lib in libs)
                + " steps/s"
            )
        profile = {
            "steps": budget.profile_steps,
            "seqrl": profile_seqrl(agents["seqrl"], samplers["seqrl"], budget),
        }
        profile["d3rlpy"] = d3.call("profile", steps=budget.profile_steps, top=60)
    steps_total = budget.tp_blocks * budget.tp_block_steps
    parameters = sum(p.numel() for p in agents["seqrl"].model.parameters())
    result: dict[str, Any] = {
        "blocks": budget.tp_blocks,
        "block_steps": budget.tp_block_steps,
        "warmup": budget.tp_warmup,
        "threads": args.threads,
        "libraries": list(libs),
        "d3rlpy_version": info["d3rlpy"],
        "profile": profile,
    }
    for lib in libs:
        result[lib] = {
            "steps_per_s": steps_total / sum(times[lib]),
            "block_seconds": times[lib],
            "parameters": info["parameters"] if lib == "d3rlpy" else parameters,
        }
    result["block_ratios"] = [d / s for s, d in zip(times["seqrl"], times["d3rlpy"])]
    result["block_ratios_auto"] = [d / s for s, d in zip(times["seqrl-auto"], times["d3rlpy"])]
    result["ratio"] = result["seqrl"]["steps_per_s"] / result["d3rlpy"]["steps_per_s"]
    result["ratio_auto"] = result["seqrl-auto"]["steps_per_s"] / result["d3rlpy"]["steps_per_s"]
    result["fast_bf16"] = fast_bf16("cpu")
    log(f"throughput: seqrl / d3rlpy = {result['ratio']:.2f}x, auto: {result['ratio_auto']:.2f}x")
    return result


def profile_seqrl(agent: Any, sampler: Any, budget: Budget) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    steps = budget.profile_steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            agent.update(sampler.sample())
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "ops": [[e.key, e.self_cpu_time_total / 1000 / steps, e.count / steps] for e in rows[:60]],
        "total_ms": sum(e.self_cpu_time_total for e in rows) / 1000 / steps,
    }


# ---- stage 3: scores -------------------------------------------------------------------------


def score_run(args: argparse.Namespace, budget: Budget, variant: str, seed: int) -> None:
    """One (variant, seed) run, in its own process: train, evaluate along the way, write
    `OUT/scores/VARIANT-sSEED/result.json`."""
    folder = args.out / "scores" / f"{variant}-s{seed}"
    if folder.exists():
        shutil.rmtree(folder)  # an unfinished earlier attempt
    folder.mkdir(parents=True)
    config = seqrl_config(variant, budget, seed)
    begin = time.perf_counter()
    if variant == "d3rlpy":
        curve = d3rlpy_score_run(args, budget, config, seed, folder)
    else:
        from seqrl.train.logging import read_metrics
        from seqrl.train.runs import train_run

        train_run(folder / "run", config, progress=False)
        curve = [
            {
                "step": int(r["step"]),
                "normalized_mean": r["eval/normalized_score"],
                "normalized_std": r["eval/normalized_score_std"],
                "return_mean": r["eval/return_mean"],
                "length_mean": r["eval/length_mean"],
            }
            for r in read_metrics(folder / "run")
            if "eval/normalized_score" in r
        ]
    result = {
        "variant": variant,
        "seed": seed,
        "steps": run_steps(variant, budget),
        "curve": curve,
        "final": curve[-1],
        "seconds": time.perf_counter() - begin,
        "agent": config["agent"],
        "policy": config["policy"],
    }
    (folder / "result.json").write_text(json.dumps(result, indent=1))


def d3rlpy_score_run(
    args: argparse.Namespace, budget: Budget, config: dict[str, Any], seed: int, folder: Path
) -> list[dict[str, Any]]:
    from seqrl.envs import evaluate

    _, reference, _ = reference_scores()
    agent = config["agent"]
    curve = []
    with D3rlpyProcess(args.d3rlpy_python, args.threads, folder / "d3rlpy.log") as d3:
        d3.call("init", dataset=str(args.data_dir / HDF5_NAME), seed=seed, threads=args.threads,
                **dt_settings(agent))  # fmt: skip
        done, steps = 0, run_steps("d3rlpy", budget)
        while done < steps:
            chunk = min(budget.eval_every, steps - done) if budget.eval_every else steps
            d3.call("train", steps=chunk)
            done += chunk
            num_envs = min(budget.eval_num_envs, budget.eval_episodes)
            policy = D3rlpyPolicy(d3, num_envs, config["policy"]["target_return"])
            result = evaluate(policy, ENV_ID, budget.eval_episodes, num_envs, EVAL_SEED, reference)
            curve.append(
                {
                    "step": done,
                    "normalized_mean": result.normalized_mean,
                    "normalized_std": result.normalized_std,
                    "return_mean": result.mean,
                    "length_mean": float(np.mean(result.lengths)),
                }
            )
            print(
                f"d3rlpy seed {seed} step {done}: normalized {result.normalized_mean:.1f}",
                flush=True,
            )
    return curve


def stage_scores(args: argparse.Namespace, budget: Budget, command_args: list[str]) -> dict:
    """Run every (variant, seed) as its own process, `--workers` at a time, slowest first."""
    jobs = [(v, s) for v in COST_ORDER for s in range(budget.seeds)]
    pending = [job for job in jobs if not result_path(args, *job).exists()]
    running: list[tuple[subprocess.Popen, tuple[str, int], Any]] = []
    failed = []
    while pending or running:
        while pending and len(running) < args.workers:
            variant, seed = pending.pop(0)
            log_file = open(args.out / "scores" / f"{variant}-s{seed}.log", "w")  # noqa: SIM115
            cmd = [sys.executable, str(Path(__file__).resolve()), *command_args,
                   "--score-run", f"{variant}:{seed}"]  # fmt: skip
            running.append((subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT),
                            (variant, seed), log_file))  # fmt: skip
            log(f"score run {variant} seed {seed} started")
        time.sleep(1.0)
        for item in list(running):
            proc, job, log_file = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log_file.close()
            if proc.returncode != 0 or not result_path(args, *job).exists():
                failed.append(job)
                log(f"score run {job} FAILED (exit {proc.returncode}), see its .log")
            else:
                final = json.loads(result_path(args, *job).read_text())["final"]
                log(
                    f"score run {job[0]} seed {job[1]} done: normalized {final['normalized_mean']:.1f}"
                )
    if failed:
        raise RuntimeError(f"score runs failed: {failed}; see {args.out / 'scores'}/*.log")
    variants = []
    for key in ("seqrl", "d3rlpy", "sliding", "xlstm"):
        runs = [json.loads(result_path(args, key, s).read_text()) for s in range(budget.seeds)]
        variants.append(
            {"key": key, "label": VARIANTS[key][0], "steps": run_steps(key, budget), "runs": runs}
        )
    return {
        "variants": variants,
        "budget": budget_label(budget),
        "eval_episodes": budget.eval_episodes,
        "eval_seed": EVAL_SEED,
        "target_return": variants[0]["runs"][0]["policy"]["target_return"],
        "workers": args.workers,
    }


def result_path(args: argparse.Namespace, variant: str, seed: int) -> Path:
    return args.out / "scores" / f"{variant}-s{seed}" / "result.json"


def budget_label(budget: Budget) -> str:
    return (
        f"{budget.steps} gradient steps per seqrl / d3rlpy DT run, {budget.variant_steps} per "
        f"sliding / xLSTM run; batch 64, lr warm-up {budget.warmup} steps, {budget.seeds} "
        f"seed(s), {budget.eval_episodes} eval episodes"
    )


# ---- stage 4: evaluation throughput ----------------------------------------------------------


def stage_speed(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    """100 episodes per method. Rounds of `speed_block` episodes run every method in turn on the
    same episode seeds (load hits all alike); then the N = `speed_extra_envs` rows."""
    from seqrl.export import load_agent

    runs = {key: args.out / "scores" / f"{key}-s0" / "run" for key in ("seqrl", "sliding")}
    for run_dir in runs.values():
        if not run_dir.exists():
            raise FileNotFoundError(
                f"{run_dir} missing: the speed stage uses the scores stage's models"
            )
    agent, config = load_agent(runs["seqrl"])
    sliding, _ = load_agent(runs["sliding"])
    model = agent.model.eval()
    target = float(config["policy"]["target_return"])
    block, episodes, extra = budget.speed_block, budget.speed_episodes, budget.speed_extra_envs
    default_label = "default DT (seqrl seed 0)"
    sliding_label = "sliding-window DT (seed 0), its exact mode"

    def batched(which: Any, inference: str, num_envs: int):
        def run(seed: int, count: int):
            from seqrl.envs import evaluate

            policy = which.policy(min(num_envs, count), target_return=target, inference=inference)
            result = evaluate(policy, ENV_ID, count, num_envs, seed)
            return result.returns, result.lengths

        return run

    def sequential(step_fn):
        return lambda seed, count: sequential_episodes(model, step_fn, ENV_ID, count, seed, target)

    # (key, label, model, envs, run); rounds first, then the all-at-once rows
    rounds = [
        (f"seqrl-window-{block}", "(a) seqrl batched policy, window mode", default_label, block, batched(agent, "window", block)),
        (f"sliding-cache-{block}", "(a) seqrl batched policy, cache mode", sliding_label, block, batched(sliding, "cache", block)),
        ("sequential", "(b) sequential loop, left-padded window recomputed per step", default_label, 1, sequential(seqrl_step_fn(model))),
    ]  # fmt: skip
    speed: dict[str, Any] = {"episodes": episodes, "block": block, "extra_num_envs": [extra],
                             "hf_max_abs_diff": None}  # fmt: skip
    if hf_available():
        hf = hf_model_from_seqrl(model)
        speed["hf_max_abs_diff"] = max_abs_difference(
            model, seqrl_step_fn(model), hf_step_fn(model, hf)
        )
        speed["hf_attention"] = hf.config._attn_implementation
        rounds.append(("hf-sequential", "(c) Hugging Face DecisionTransformerModel, same weights, loop (b)", default_label, 1, sequential(hf_step_fn(model, hf))))  # fmt: skip
    else:
        log("transformers is not importable: skipping (c)")
    at_once = [
        (f"seqrl-window-{extra}", "(a) seqrl batched policy, window mode", default_label, extra, batched(agent, "window", extra)),
        (f"sliding-cache-{extra}", "(a) seqrl batched policy, cache mode", sliding_label, extra, batched(sliding, "cache", extra)),
    ]  # fmt: skip
    totals = {key: {"seconds": 0.0, "returns": [], "lengths": []} for key, *_ in rounds + at_once}

    def timed(key: str, run: Any, seed: int, count: int) -> None:
        begin = time.perf_counter()
        returns, lengths = run(seed, count)
        totals[key]["seconds"] += time.perf_counter() - begin
        totals[key]["returns"] += list(map(float, returns))
        totals[key]["lengths"] += list(map(int, lengths))

    for first in range(0, episodes, block):
        for key, *_, run in rounds:
            timed(key, run, SPEED_SEED + first, min(block, episodes - first))
        log(f"speed: {min(first + block, episodes)}/{episodes} episodes, " + ", ".join(
            f"{key} {t['seconds']:.1f}s" for key, t in totals.items() if t["lengths"]))  # fmt: skip
    for key, *_, run in at_once:
        timed(key, run, SPEED_SEED, episodes)
        log(f"speed: {key} {totals[key]['seconds']:.1f}s")
    speed["rows"] = [
        {
            "key": key,
            "label": label,
            "model": model_label,
            "num_envs": num_envs,
            "seconds": totals[key]["seconds"],
            "env_steps": int(sum(totals[key]["lengths"])),
            "return_mean": float(np.mean(totals[key]["returns"])),
            "returns": totals[key]["returns"],
        }
        for key, label, model_label, num_envs, _ in rounds + at_once
    ]
    window = np.array(totals[f"seqrl-window-{block}"]["returns"])
    speed["window_vs_sequential_max_return_diff"] = float(
        np.abs(window - np.array(totals["sequential"]["returns"])).max()
    )
    speed["overhead"] = dt_overhead(agent, sliding, target, budget, args.threads)
    return speed


def dt_overhead(agent: Any, sliding: Any, target: float, budget: Budget, threads: int) -> dict:
    """The policy's share next to MuJoCo's own stepping (issue 16's target <= 0.30) for the
    trained DTs at `speed_extra_envs` envs, with `experiments/bench_rollout.py`'s measurement:
    at `--threads` and at every core when the machine has more."""
    from bench_rollout import policy_overhead

    envs = budget.speed_extra_envs
    policies = {
        "sliding-window DT, cache mode": sliding.policy(envs, target_return=target,
                                                        inference="cache"),
        "default DT, window mode": agent.policy(envs, target_return=target, inference="window"),
    }  # fmt: skip
    counts = sorted({threads, os.cpu_count() or 1})
    rounds, steps = (1, 5) if envs < 10 else (3, 100)
    return policy_overhead(policies, envs, rounds, steps, counts)


# ---- main --------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, no GPU, {platform.system()}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, every path (< 2 min)")
    parser.add_argument(
        "--out", type=Path, help="output folder (default runs/bench_dt/{quick,full})"
    )
    parser.add_argument(
        "--results", type=Path, help="where table.md / curves.png / results.json go"
    )
    parser.add_argument(
        "--venv", type=Path, help="d3rlpy's venv (default runs/bench_dt/d3rlpy-venv)"
    )
    parser.add_argument("--d3rlpy-python", type=Path, help="an interpreter that imports d3rlpy")
    parser.add_argument("--data-dir", type=Path, help="folder with minari/ and " + HDF5_NAME)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--workers", type=int, default=2, help="score runs at a time")
    parser.add_argument("--stages", default="",
                        help="comma-separated stages to redo (throughput,scores,speed); full mode "
                        "otherwise reuses the stages and score runs already in --out")  # fmt: skip
    for field in fields(Budget):
        parser.add_argument("--" + field.name.replace("_", "-"), type=int, default=None)
    parser.add_argument("--only", default="",
                        help="comma-separated stages to run, nothing else (no report unless "
                        "the other stages' results are already in --out)")  # fmt: skip
    parser.add_argument("--score-run", help=argparse.SUPPRESS)  # VARIANT:SEED, internal
    args = parser.parse_args(argv)
    base = runs = REPO / "runs" / "bench_dt"
    args.out = (args.out or base / ("quick" if args.quick else "full")).resolve()
    args.results = (
        args.results or (args.out if args.quick else REPO / "experiments/results/dt")
    ).resolve()
    args.venv = (args.venv or runs / "d3rlpy-venv").resolve()
    if args.data_dir is None:
        minari_root = os.environ.get("MINARI_DATASETS_PATH")
        args.data_dir = Path(minari_root).parent if minari_root else REPO.parent / "shared" / "data"
    args.data_dir = args.data_dir.resolve()
    os.environ["MINARI_DATASETS_PATH"] = str(args.data_dir / "minari")
    return args


def resolve_budget(args: argparse.Namespace) -> Budget:
    budget = QUICK if args.quick else Budget()
    overrides = {
        f.name: getattr(args, f.name) for f in fields(Budget) if getattr(args, f.name) is not None
    }
    return Budget(**{**asdict(budget), **overrides})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    budget = resolve_budget(args)
    if args.score_run:
        variant, seed = args.score_run.split(":")
        score_run(args, budget, variant, int(seed))
        return
    begin = time.perf_counter()
    if not (args.data_dir / HDF5_NAME).is_file() or not (args.data_dir / "minari").is_dir():
        raise FileNotFoundError(
            f"{args.data_dir} must hold minari/ and {HDF5_NAME} (the shared data); pass --data-dir "
            "or set MINARI_DATASETS_PATH to its minari folder"
        )
    stages = {s for s in args.stages.split(",") if s}
    if args.quick:  # quick mode checks every path: always from scratch
        stages = {"throughput", "scores", "speed"}
    if "scores" in stages and (args.out / "scores").exists():
        shutil.rmtree(args.out / "scores")
    (args.out / "scores").mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    meta_path = args.out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.setdefault("stage_seconds", {})
    meta.setdefault("stage_commands", {})
    todo = [n for n in STAGES if n in stages or not (args.out / f"{n}.json").exists()]
    if args.only:  # these stages and nothing else (the report needs all three)
        todo = [n for n in STAGES if n in args.only.split(",")]
    command = " ".join(
        ["python experiments/bench_dt.py", *(argv if argv is not None else sys.argv[1:])]
    )
    if todo:
        meta.update(load_start=load_average(), machine=machine(), torch=torch.__version__,
                    date=time.strftime("%Y-%m-%d"), budget=asdict(budget))  # fmt: skip
    log(f"output {args.out}; budget {budget}")
    args.d3rlpy_python = ensure_d3rlpy(args.venv, args.d3rlpy_python, log=log)
    meta["d3rlpy"] = subprocess.run(
        [str(args.d3rlpy_python), "-c", "import d3rlpy; print(d3rlpy.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if hf_available():
        import transformers

        meta["transformers"] = transformers.__version__
    _, _, meta["dataset_normalized_mean"] = reference_scores()
    command_args = [
        "--out", str(args.out), "--threads", str(args.threads), "--data-dir", str(args.data_dir),
        "--d3rlpy-python", str(args.d3rlpy_python),
        *[x for f in fields(Budget) for x in ("--" + f.name.replace("_", "-"), str(getattr(budget, f.name)))],
    ]  # fmt: skip
    for name, stage in (
        ("throughput", lambda: stage_throughput(args, budget, args.d3rlpy_python)),
        ("scores", lambda: stage_scores(args, budget, command_args)),
        ("speed", lambda: stage_speed(args, budget)),
    ):
        if name in todo:
            log(f"stage {name} (load {load_average()})")
            stage_begin = time.perf_counter()
            (args.out / f"{name}.json").write_text(json.dumps(stage(), indent=1))
            meta["stage_seconds"][name] = time.perf_counter() - stage_begin
            meta["stage_commands"][name] = command
            meta_path.write_text(json.dumps(meta, indent=1))
    if todo:
        meta["load_end"] = load_average()
    meta["wall_minutes"] = sum(meta["stage_seconds"].values()) / 60
    meta_path.write_text(json.dumps(meta, indent=1))
    missing = [n for n in STAGES if not (args.out / f"{n}.json").exists()]
    if missing:
        log(f"stages {todo} written to {args.out}; no report without {missing}")
        return
    results: dict[str, Any] = {"meta": meta}
    for name in ("throughput", "scores", "speed"):
        results[name] = json.loads((args.out / f"{name}.json").read_text())
    results["profile"] = results["throughput"].pop("profile")
    (args.results / "results.json").write_text(json.dumps(results, indent=1))
    write_table(results, args.results / "table.md")
    plot_curves(results, args.results / "curves.png")
    log(f"wrote {args.results}/table.md, curves.png, results.json in "
        f"{(time.perf_counter() - begin) / 60:.1f} min")  # fmt: skip
    print((args.results / "table.md").read_text())


if __name__ == "__main__":
    main()

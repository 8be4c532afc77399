"""Rollout cost of every registered agent: `act` latency against episode position, and the
policy's share of wall time next to MuJoCo's own stepping at 100 Hopper envs.

Two tables, one run (issue 16):
1. latency: ms per `policy.act` at episode positions t (default 10, 100, 400) for B = 1 and
   B = 100, for every agent in the registry and every backbone its config accepts (DT: the exact
   cache mode where the config allows it, else the reference window mode). Cached and recurrent
   policies should be flat in t.
2. overhead: 100 Hopper-v5 envs (`make_vector_env`, same-step autoreset) stepped with each
   policy in turn, in interleaved rounds, plus a constant (zero-action) policy: MuJoCo alone, the
   ceiling. Per policy: time in `act` over time in `env.step` measured in the same loop
   (target <= 0.30), and env steps / s against the ceiling's.
3. async: the same 100 envs stepped in this process (`SyncVectorEnv`) and in one subprocess
   each (`AsyncVectorEnv`, `make_vector_env(asynchronous=True)`), in interleaved rounds, with the
   constant policy (MuJoCo alone) and with recurrent PPO's LSTM policy: env steps / s and the
   async / sync ratio, on however many cores the machine has (`os.cpu_count()` in the table).

    .venv/bin/python experiments/bench_rollout.py --quick        # every row, tiny budgets
    nice .venv/bin/python experiments/bench_rollout.py > runs/rollouts/bench.log 2>&1

Weights are random (the cost of `act` does not depend on them); one torch thread.
Writes experiments/results/dt/rollout.{md,json} (quick mode: runs/rollouts/quick/).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import statistics
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
ENV_ID = "Hopper-v5"

# (agent, backbone) -> (config overrides, policy options); the DT rows use its exact cache
# mode where the config accepts it (the sliding preset for gpt), else the reference window mode.
DT_ROWS = {
    "gpt": ({"context_len": 40, "attention_window": 13}, {"inference": "cache"}),  # the preset
    "gpt-window": ({}, {"inference": "window"}),
    "gtrxl": ({"context_len": 20, "attention_window": 6}, {"inference": "cache"}),
    "mlp": ({}, {"inference": "cache"}),
}


def log(message: str) -> None:
    print(f"[bench_rollout {time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine() -> dict[str, Any]:
    from seqrl.agents.dt import fast_bf16

    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "fast_bf16": fast_bf16("cpu"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def hopper_spec():
    import gymnasium as gym

    from seqrl.core import EnvSpec

    env = gym.make(ENV_ID)
    spec = EnvSpec.from_spaces(env.observation_space, env.action_space)
    env.close()
    return spec


def policy_rows(names: list[str] | None) -> list[tuple[str, str, dict, dict]]:
    """(agent, label, config overrides, policy options) for every agent and backbone."""
    from seqrl.agents import REGISTRY
    from seqrl.nn import BACKBONES

    rows = []
    for name, entry in REGISTRY.items():
        if names and name not in names:
            continue
        if name == "dt":
            for label, (config, options) in DT_ROWS.items():
                backbone = label.split("-")[0]
                rows.append((name, label, {"backbone": backbone, **config}, options))
            for backbone in ("lstm", "gru", "xlstm"):
                rows.append((name, f"{backbone}-window", {"backbone": backbone},
                             {"inference": "window"}))  # fmt: skip
            continue
        if "backbone" in {f.name for f in fields(entry.config_cls)}:
            for backbone in BACKBONES:
                rows.append((name, backbone, {"backbone": backbone}, {}))
        else:
            rows.append((name, "-", {}, {}))
    return rows


def preset_rows(items: list[str]) -> list[tuple[str, str, dict, dict]]:
    """Rows for `--preset AGENT=PATH`: the preset's `agent:` and `policy:` sections."""
    import yaml

    from seqrl.agents import REGISTRY

    rows = []
    for item in items:
        agent, _, path = item.partition("=")
        if agent not in REGISTRY or not path:
            raise SystemExit(f"--preset takes AGENT=PATH with AGENT one of {sorted(REGISTRY)}; "
                             f"got {item!r}")  # fmt: skip
        if not (REPO / path).is_file():
            raise SystemExit(f"--preset {item}: no file {REPO / path}")
        preset = yaml.safe_load((REPO / path).read_text()) or {}
        rows.append((agent, f"preset {Path(path).stem}", preset.get("agent") or {},
                     preset.get("policy") or {}))  # fmt: skip
    return rows


def with_policy_options(rows: list, items: list[str]) -> list:
    """Rows with `--policy-option AGENT.NAME=VALUE` items (values parsed as YAML) added."""
    from seqrl.config import apply_overrides

    options = apply_overrides({}, items, flag="--policy-option", example="diffusion.scheduler=ddim")
    return [(agent, label, config, {**row_options, **options.get(agent, {})})
            for agent, label, config, row_options in rows]  # fmt: skip


def make_policy(
    spec: Any, agent_name: str, config: dict, options: dict, num_envs: int, compiled: bool = False
) -> Any:
    """The agent's policy over `num_envs` envs; `compiled`: what `--compile` runs (`act` under
    `torch.compile`, seqrl.train.compiled)."""
    from seqrl.agents import REGISTRY
    from seqrl.config import from_dict
    from seqrl.train.compiled import compile_agent

    entry = REGISTRY[agent_name]
    agent = entry.agent_cls(from_dict(entry.config_cls, config, "agent"), spec, None)
    return (compile_agent(agent) if compiled else agent).policy(num_envs, **options)


def act_latency(spec: Any, row: tuple, num_envs: int, positions: list[int], repeats: int) -> dict:
    """Median ms per `act` at each episode position (every env at the same position)."""
    agent_name, _, config, options = row
    torch.manual_seed(0)
    policy = make_policy(spec, agent_name, config, options, num_envs)
    policy.reset()
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(num_envs, *spec.obs_shape)).astype(np.float32)
    reward = np.zeros(num_envs, np.float32)
    out, t = {}, 0
    for position in positions:
        while t < position:
            policy.act(obs, reward)
            t += 1
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            policy.act(obs, reward)
            times.append(time.perf_counter() - begin)
        t += repeats
        out[str(position)] = 1000 * statistics.median(times)
    return out


def stage_latency(args: argparse.Namespace, spec: Any, rows: list) -> list[dict]:
    reused = {}
    if args.reuse_latency:  # rows measured by an earlier (interrupted) run of the same rows
        for entry in json.loads(args.reuse_latency.read_text())["latency"]:
            reused[(entry["agent"], entry["backbone"])] = entry
    results = []
    for row in rows:
        entry = {"agent": row[0], "backbone": row[1], "options": row[3]}
        if (row[0], row[1]) in reused:
            results.append({**reused[(row[0], row[1])], **entry})
            continue
        for num_envs in (1, args.envs):
            try:
                entry[f"B={num_envs}"] = act_latency(spec, row, num_envs, args.positions,
                                                     args.repeats)  # fmt: skip
            except Exception as error:
                entry[f"B={num_envs}"] = {"error": f"{type(error).__name__}: {error}"[:200]}
        log(f"latency {row[0]} {row[1]}: " + json.dumps({k: v for k, v in entry.items()
                                                         if k.startswith("B=")}))  # fmt: skip
        results.append(entry)
    return results


def thread_label(key: str, threads: int, choices: list[int]) -> str:
    """A row's label: the policy, and its torch thread count when several are measured."""
    return key if len(choices) == 1 else f"{key} ({threads} thread{'s' * (threads > 1)})"


def play_round(
    envs: Any, policy: Any, steps: int, seed: int, total: dict, bounds: tuple[Any, Any]
) -> None:
    """`steps` vector steps of `policy` from `envs.reset(seed=seed)` (every policy plays the
    same fresh episodes in a round), adding the time in `act` and in `env.step` and the env
    steps to `total`; actions are clipped into `bounds` (low, high)."""
    obs, reward = envs.reset(seed=seed)[0], None
    policy.reset()
    for _ in range(steps):
        begin = time.perf_counter()
        action = np.clip(np.asarray(policy.act(obs, reward).action, np.float64), *bounds)
        middle = time.perf_counter()
        obs, reward, terminated, truncated, _ = envs.step(action)
        total["act"] += middle - begin
        total["env"] += time.perf_counter() - middle
        total["steps"] += envs.num_envs
        done = terminated | truncated
        if done.any():
            policy.reset(done)


class ZeroPolicy:
    """The MuJoCo-only ceiling: a constant action, no computation."""

    def __init__(self, num_envs: int, action_dim: int) -> None:
        self.action = np.zeros((num_envs, action_dim), np.float32)

    def reset(self, done: Any = None) -> None:
        pass

    def act(self, obs: Any, reward: Any = None) -> Any:
        from seqrl.core import PolicyStep

        return PolicyStep(action=torch.from_numpy(self.action))


def stage_overhead(args: argparse.Namespace, spec: Any, rows: list) -> dict:
    policies: dict[str, Any] = {}
    for row in rows:
        if any(part in f"{row[0]} {row[1]}" for part in args.skip_overhead):
            continue
        for compiled in (False, True) if args.compile else (False,):
            label = f"{row[0]} {row[1]}" + (" compiled" if compiled else "")
            try:
                torch.manual_seed(0)
                policies[label] = make_policy(spec, row[0], row[2], row[3], args.envs, compiled)
            except Exception as error:
                log(f"overhead: skipping {label}: {error}")
    if args.compile:  # compile every graph the loop meets (resets, padding) before timing
        log("overhead: compiling (one untimed round)")
        compiled_ones = {k: v for k, v in policies.items() if k.endswith(" compiled")}
        policy_overhead(compiled_ones, args.envs, 1, args.steps, args.threads)
    return policy_overhead(policies, args.envs, args.rounds, args.steps, args.threads)


def policy_overhead(
    policies: dict[str, Any], num_envs: int, rounds: int, steps: int, threads: list[int]
) -> dict:
    """Each policy (label -> `Policy` over `num_envs` envs) steps `num_envs` Hopper envs, with
    the MuJoCo-only ceiling (a constant action), in `rounds` interleaved rounds of `steps` vector
    steps at every torch thread count: time in `act` over time in `env.step`, and env steps / s
    against the ceiling's (also used by experiments/bench_dt.py on its trained DT)."""
    from seqrl.envs import make_vector_env

    envs = make_vector_env(ENV_ID, num_envs, seed=0, autoreset=True)
    low, high = envs.single_action_space.low, envs.single_action_space.high
    action_dim = int(np.prod(envs.single_action_space.shape))
    policies = {"ceiling": ZeroPolicy(num_envs, action_dim), **policies}
    runs = {thread_label(key, count, threads): (policy, count)
            for key, policy in policies.items() for count in threads}  # fmt: skip
    totals = {key: {"act": 0.0, "env": 0.0, "steps": 0} for key in runs}
    restore = torch.get_num_threads()
    for round_index in range(rounds):
        for key, (policy, count) in runs.items():
            torch.set_num_threads(count)
            play_round(envs, policy, steps, 1000 * round_index, totals[key], (low, high))
        log(f"overhead round {round_index + 1}/{rounds}: " + ", ".join(
            f"{k} {t['act'] / max(t['env'], 1e-9):.2f}" for k, t in totals.items()))  # fmt: skip
    envs.close()
    torch.set_num_threads(restore)
    ceiling = totals[thread_label("ceiling", threads[0], threads)]
    ceiling_rate = ceiling["steps"] / (ceiling["act"] + ceiling["env"])
    result = {"num_envs": num_envs, "rounds": rounds, "steps_per_round": steps,
              "threads": threads, "ceiling_env_steps_per_s": ceiling_rate, "rows": []}  # fmt: skip
    for key, t in totals.items():
        rate = t["steps"] / (t["act"] + t["env"])
        result["rows"].append({
            "policy": key,
            "act_ms": 1000 * t["act"] * num_envs / t["steps"],
            "env_ms": 1000 * t["env"] * num_envs / t["steps"],
            "overhead": t["act"] / t["env"],
            "env_steps_per_s": rate,
            "vs_ceiling": rate / ceiling_rate,
        })  # fmt: skip
    return result


ASYNC_POLICIES = (("recurrent-ppo", "lstm", {"backbone": "lstm"}, {}),)
"""Policies of the async stage besides the constant one: one cheap sequence policy."""


def stage_async(args: argparse.Namespace, spec: Any) -> dict:
    """Env steps / s with envs stepped in this process vs in subprocesses, same run."""
    from seqrl.envs import make_vector_env

    policies: dict[str, Any] = {"ceiling": ZeroPolicy(args.envs, spec.action_dim)}
    for agent_name, backbone, config, options in ASYNC_POLICIES:
        torch.manual_seed(0)
        policies[f"{agent_name} {backbone}"] = make_policy(spec, agent_name, config, options,
                                                           args.envs)  # fmt: skip
    modes = {"sync": False, "async": True}
    vector_envs = {mode: make_vector_env(ENV_ID, args.envs, seed=0, asynchronous=flag)
                   for mode, flag in modes.items()}  # fmt: skip
    low, high = spec.action_low, spec.action_high
    totals = {(key, mode): {"act": 0.0, "env": 0.0, "steps": 0}
              for key in policies for mode in modes}  # fmt: skip
    for round_index in range(args.rounds):
        for mode, envs in vector_envs.items():
            for key, policy in policies.items():
                play_round(envs, policy, args.steps, 1000 * round_index, totals[(key, mode)],
                           (low, high))  # fmt: skip
        log(f"async round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{k} {m} {t['steps'] / (t['act'] + t['env']):.0f}/s"
            for (k, m), t in totals.items()))  # fmt: skip
    for envs in vector_envs.values():
        envs.close()
    rows = []
    for key in policies:
        rate = {mode: totals[(key, mode)]["steps"] / (totals[(key, mode)]["act"]
                                                      + totals[(key, mode)]["env"])
                for mode in modes}  # fmt: skip
        env_ms = {mode: 1000 * totals[(key, mode)]["env"] * args.envs
                  / totals[(key, mode)]["steps"] for mode in modes}  # fmt: skip
        rows.append(
            {
                "policy": key,
                "sync_env_steps_per_s": rate["sync"],
                "async_env_steps_per_s": rate["async"],
                "sync_env_ms": env_ms["sync"],
                "async_env_ms": env_ms["async"],
                "async_vs_sync": rate["async"] / rate["sync"],
            }
        )
    return {"num_envs": args.envs, "cores": os.cpu_count(), "rounds": args.rounds,
            "steps_per_round": args.steps, "rows": rows}  # fmt: skip


def overhead_table(overhead: dict) -> list[str]:
    """The markdown table of `policy_overhead`'s result."""
    lines = [
        "| policy | act ms / vector step | env.step ms / vector step | act / env.step | "
        "env steps / s | vs MuJoCo alone |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in overhead["rows"]:
        mark = "" if row["overhead"] <= 0.30 else " (missed)"
        lines.append(
            f"| {row['policy']} | {row['act_ms']:.2f} | {row['env_ms']:.2f} | "
            f"{row['overhead']:.2f}{mark} | {row['env_steps_per_s']:.0f} | "
            f"{row['vs_ceiling']:.2f} |"
        )
    return lines


def write_table(results: dict, path: Path) -> None:
    meta = results["machine"]
    lines = [
        "## Rollout cost per agent (experiments/bench_rollout.py)",
        "",
        f"{meta['cpu']}, {meta['cores']} cores, fast bf16: {meta['fast_bf16']}, torch "
        f"{meta['torch']}, torch threads {meta['threads']} (overhead stage: "
        f"{', '.join(map(str, results.get('overhead', {}).get('threads', [meta['threads']])))}), "
        "load average at start "
        f"{' '.join(f'{x:.1f}' for x in meta['load'])}, at end "
        f"{' '.join(f'{x:.1f}' for x in meta.get('load_end', ()))} (shared machine), "
        f"{meta['date']}, {results.get('wall_minutes', 0):.1f} min.",
        "",
    ]
    positions, envs = results["positions"], results["envs"]
    if results["latency"]:
        lines += ["### `act` latency, ms (median), against episode position t", ""]
        if results.get("latency_note"):  # rows merged from runs at different times
            lines += [results["latency_note"] + ".", ""]
        header = "| agent | backbone / mode | " + " | ".join(
            f"B={b}, t={t}" for b in (1, envs) for t in positions) + " |"  # fmt: skip
        lines += [header, "|---|---|" + "---:|" * (2 * len(positions))]
    for entry in results["latency"]:
        cells = []
        for b in (1, envs):
            data = entry.get(f"B={b}", {})
            if "error" in data:
                cells += ["error"] * len(positions)
            else:
                cells += [f"{data[str(t)]:.2f}" for t in positions]
        mode = entry["backbone"] + (f" ({entry['options']['inference']})"
                                    if "inference" in entry["options"] else "")  # fmt: skip
        mode += " \\*" if "remeasured" in entry else ""
        lines.append(f"| {entry['agent']} | {mode} | " + " | ".join(cells) + " |")
    overhead = results.get("overhead")
    if overhead:
        lines += [
            "",
            f"### Policy overhead at {overhead['num_envs']} Hopper-v5 envs (target <= 0.30)",
            "",
            f"{overhead['rounds']} interleaved rounds of {overhead['steps_per_round']} vector "
            f"steps per policy. MuJoCo alone (zero actions): "
            f"{overhead['ceiling_env_steps_per_s']:.0f} env steps / s.",
            "",
            *overhead_table(overhead),
        ]
    stepping = results.get("async")
    if stepping:
        lines += [
            "",
            f"### Envs in subprocesses at {stepping['num_envs']} Hopper-v5 envs, "
            f"{stepping['cores']} cores",
            "",
            f"{stepping['rounds']} interleaved rounds of {stepping['steps_per_round']} vector "
            "steps per policy and mode; `env.step` ms per vector step in brackets.",
            "",
            "| policy | sync env steps / s | async env steps / s | async / sync |",
            "|---|---:|---:|---:|",
        ]
        for row in stepping["rows"]:
            lines.append(
                f"| {row['policy']} | {row['sync_env_steps_per_s']:.0f} "
                f"({row['sync_env_ms']:.1f} ms) | {row['async_env_steps_per_s']:.0f} "
                f"({row['async_env_ms']:.1f} ms) | {row['async_vs_sync']:.2f} |"
            )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, every row")
    parser.add_argument("--agents", nargs="*", help="only these registry names")
    parser.add_argument("--envs", type=int, default=100)
    parser.add_argument("--positions", type=int, nargs="*", default=[10, 100, 400])
    parser.add_argument("--repeats", type=int, default=10, help="acts timed per position")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="vector steps per round")
    parser.add_argument("--stages", default="latency,overhead,async",
                        help="comma-separated subset of latency,overhead,async")  # fmt: skip
    parser.add_argument("--skip", nargs="*", default=[],
                        help="leave rows whose 'agent backbone' contains one of these out")  # fmt: skip
    parser.add_argument("--reuse-latency", type=Path, help="rollout.json whose rows to keep")
    parser.add_argument("--skip-overhead", nargs="*", default=[],
                        help="leave policies whose label contains one of these out of stage 2")  # fmt: skip
    parser.add_argument("--policy-option", action="append", default=[], metavar="AGENT.NAME=VALUE",
                        help="a policy option for one agent's rows, repeatable, e.g. "
                        "diffusion.scheduler=ddim diffusion.inference_steps=8")  # fmt: skip
    parser.add_argument("--preset", action="append", default=[], metavar="AGENT=PATH",
                        help="also measure a preset's model and policy options, repeatable, e.g. "
                        "diffusion=experiments/diffusion/hopper-expert.yaml")  # fmt: skip
    parser.add_argument("--threads", type=int, nargs="+", default=[1],
                        help="torch threads: the first for the latency and async stages; the "
                        "overhead stage measures every policy at each (e.g. --threads 1 2)")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        help="overhead stage: also measure each policy with `act` under "
                        "torch.compile (what `--compile` runs), after one untimed round")  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.envs, args.positions, args.repeats, args.rounds, args.steps = 4, [2, 5], 2, 1, 5
    out = args.out or (
        REPO / "runs/rollouts/quick" if args.quick else REPO / "experiments/results/dt"
    )
    out.mkdir(parents=True, exist_ok=True)
    if min(args.threads) < 1:
        raise SystemExit(f"--threads must be >= 1; got {args.threads}")
    torch.set_num_threads(args.threads[0])
    spec = hopper_spec()
    rows = [row for row in policy_rows(args.agents) + preset_rows(args.preset)
            if not any(part in f"{row[0]} {row[1]}" for part in args.skip)]  # fmt: skip
    rows = with_policy_options(rows, args.policy_option)
    results: dict[str, Any] = {"machine": machine(), "positions": args.positions,
                               "envs": args.envs}  # fmt: skip
    stages = set(args.stages.split(","))
    begin = time.perf_counter()
    results["latency"] = stage_latency(args, spec, rows) if "latency" in stages else []
    if "overhead" in stages:
        results["overhead"] = stage_overhead(args, spec, rows)
    if "async" in stages:
        results["async"] = stage_async(args, spec)
    results["machine"]["load_end"] = os.getloadavg()
    results["wall_minutes"] = (time.perf_counter() - begin) / 60
    (out / "rollout.json").write_text(json.dumps(results, indent=1))
    write_table(results, out / "rollout.md")
    print((out / "rollout.md").read_text())


if __name__ == "__main__":
    main()

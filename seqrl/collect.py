"""Record offline datasets: run a policy in Gymnasium vector envs and write Minari or D4RL HDF5.

    seqrl collect --env Hopper-v5 --policy sb3/hopper-ppo-medium.zip --episodes 100 \\
        --out seqrl/hopper/medium-v0

`--policy` is `random`, a Stable-Baselines3 `.zip` (its `<stem>-obsrms.npz` beside it, the
VecNormalize observation statistics as NumPy arrays, is applied to observations as SB3 does at
training time), or a seqrl run directory (`seqrl.export.load_policy`). `--train-sb3 ppo|sac --steps N` first trains an
SB3 agent with default hyperparameters and keeps its checkpoint, then records with it.

Nothing is unpickled unless `--allow-pickle` is passed: SB3's `.zip` cloudpickles some entries
(policy class, spaces, schedules), which are replaced by safe equivalents on loading, and a
`vecnormalize.pkl` beside the model is refused (use the `.npz`), since a pickle can run code. `--out` is
a Minari id (written under `$MINARI_DATASETS_PATH` or `~/.minari/datasets`), a Minari folder
(`./data/name-v0`), or a path ending in `.hdf5` / `.h5` (D4RL layout): the forms of
`seqrl.buffers.save_dataset`.

Which episodes are kept, and why it is unbiased. With several envs stepping in lockstep, the
episodes that *finish* first are the short ones; stopping when N have finished would over-sample
short (often failed) episodes. Instead every episode gets a ticket when it *starts* (envs are
visited in index order within a step) and exactly the episodes holding tickets 0..N-1 are kept,
however long they run; collection stops once all N have finished. Whether an episode is kept
depends only on when it started, that is on the lengths of the episodes before it in the same
env, never on its own outcome. Envs whose next episode would get no ticket keep stepping (a
vector env steps all envs) but what they record is thrown away. Env i's first episode is reset
with `seed + i`; later ones continue that env's RNG, so a (seed, num_envs) pair always records
the same dataset for a deterministic policy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from seqrl.buffers import HDF5_SUFFIXES, EpisodeStore, StoreMetadata, save_dataset
from seqrl.buffers.datasets import check_save_target
from seqrl.core import Policy

SB3_ALGOS = ("ppo", "sac")


@dataclass
class CollectResult:
    """What `collect` recorded and where it went."""

    store: EpisodeStore
    path: Path
    """The Minari dataset folder or the HDF5 file."""
    policy: str
    """Description of the policy that acted."""
    sb3_checkpoint: Path | None = None
    """The SB3 model trained by `--train-sb3`, if any."""

    def describe(self) -> str:
        """The lines `seqrl collect` prints when it is done."""
        s = self.store.summary()
        lines = [
            f"wrote {s['episodes']} episodes ({s['steps']} steps) of {self.policy} to {self.path}",
            f"return {s['return_mean']:.2f} ± {s['return_std']:.2f} "
            f"[{s['return_min']:.2f}, {s['return_max']:.2f}], episode length "
            f"{s['length_mean']:.1f}, {s['terminated_episodes']} terminated",
        ]
        if self.sb3_checkpoint is not None:
            lines.append(f"SB3 checkpoint kept at {self.sb3_checkpoint}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- policies


OBS_STATS_SUFFIX = "-obsrms.npz"
"""`<stem>-obsrms.npz` beside an SB3 `.zip`: VecNormalize's observation statistics as NumPy
arrays (`mean`, `var`; optional `clip_obs`, `epsilon`), read without unpickling."""


def find_obs_stats(model_path: str | Path, allow_pickle: bool = False) -> Path | None:
    """The observation statistics beside an SB3 `.zip`: `<stem>-obsrms.npz`, else (only with
    `allow_pickle`) `<stem>-vecnormalize.pkl` or `vecnormalize.pkl`. A pickle found without
    `allow_pickle` is an error rather than silently ignored (the policy would act on raw
    observations)."""
    model_path = Path(model_path)
    npz = model_path.with_name(model_path.stem + OBS_STATS_SUFFIX)
    if npz.is_file():
        return npz
    for candidate in (
        model_path.with_name(f"{model_path.stem}-vecnormalize.pkl"),
        model_path.with_name("vecnormalize.pkl"),
    ):
        if candidate.is_file():
            if allow_pickle:
                return candidate
            raise ValueError(
                f"{candidate}: VecNormalize statistics as a pickle, which can run code when "
                f"loaded. Fix: save them as {npz.name} (numpy.savez with mean=obs_rms.mean, "
                "var=obs_rms.var), or pass --allow-pickle if you trust the file"
            )
    return None


def _sb3_data(model_path: Path) -> dict[str, Any]:
    import json
    import zipfile

    try:
        with zipfile.ZipFile(model_path) as archive:
            return json.loads(archive.read("data"))
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise ValueError(f"{model_path}: not an SB3 model file ({err})") from None


def _sb3_algorithm_class(model_path: Path, data: dict[str, Any]) -> Any:
    """The SB3 algorithm class that saved `model_path`, from the policy class it records."""
    import stable_baselines3 as sb3

    module = data.get("policy_class", {}).get("__module__", "")
    by_module = {
        "stable_baselines3.sac": sb3.SAC,
        "stable_baselines3.td3": sb3.TD3,
        "stable_baselines3.dqn": sb3.DQN,
        "stable_baselines3.common.policies": sb3.PPO if "clip_range" in data else sb3.A2C,
    }
    for prefix, cls in by_module.items():
        if module.startswith(prefix):
            return cls
    if module.startswith("sb3_contrib.tqc"):
        from sb3_contrib import TQC

        return TQC
    raise ValueError(
        f"{model_path}: cannot tell which SB3 algorithm saved this model (policy module "
        f"{module!r}). Fix: use a PPO, A2C, SAC, TD3, DQN or TQC model (recurrent policies are "
        "not supported for collection)"
    )


def _unpickled_replacements(
    model_path: Path, data: dict[str, Any], env: Any, algorithm: Any
) -> dict[str, Any]:
    """SB3 `custom_objects` for every cloudpickled entry of the model's `data`, so that loading
    it unpickles nothing: the policy class by its recorded module and name (SB3's own modules
    only), the env's spaces (checked against the recorded shapes), and for the rest (what only
    training uses: schedules, buffers, train frequency) the algorithm's defaults."""
    import importlib
    import re

    objects: dict[str, Any] = {}
    defaults = None
    for key, value in data.items():
        if not (isinstance(value, dict) and ":serialized:" in value):
            continue
        if key == "policy_class":
            module = str(value.get("__module__", ""))
            name = re.search(r"<function (\w+)\.__init__", str(value.get("__init__", "")))
            if name is None or not module.startswith(("stable_baselines3.", "sb3_contrib.")):
                raise ValueError(
                    f"{model_path}: policy class from {module!r} is not one of SB3's. Fix: "
                    "pass --allow-pickle if you trust the file"
                )
            objects[key] = getattr(importlib.import_module(module), name.group(1))
        elif key in ("observation_space", "action_space"):
            space = getattr(env, key)
            recorded = [int(n) for n in re.findall(r"\d+", str(value.get("_shape", "")))]
            if recorded != list(space.shape or ()):
                raise ValueError(
                    f"{model_path}: field '{key}': the model was trained with shape "
                    f"{recorded}, but the env has {space}. Fix: pass the env the model was "
                    "trained on"
                )
            objects[key] = space
        elif key == "lr_schedule":
            objects[key] = _zero_schedule
        else:
            if defaults is None:  # an unbuilt instance: no networks, no replay buffer
                policy = objects.get("policy_class", "MlpPolicy")
                defaults = algorithm(policy, None, device="cpu", _init_setup_model=False)
            objects[key] = getattr(defaults, key, None)
    return objects


def _zero_schedule(progress: float) -> float:
    return 0.0


def load_sb3_policy(
    model_path: str | Path, env_id: str, deterministic: bool = True, allow_pickle: bool = False
) -> Policy:
    """An SB3 `.zip` as a seqrl `Policy`, with its observation statistics if any.

    Nothing is unpickled unless `allow_pickle`: the model's cloudpickled entries are replaced
    (`_unpickled_replacements`; SB3 reads the weights with `torch.load(weights_only=True)`) and
    the statistics come from `<stem>-obsrms.npz`."""
    from seqrl.envs import CallablePolicy, make_env

    model_path = Path(model_path).expanduser()
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no such SB3 model file. Fix: check the path")
    data = _sb3_data(model_path)
    env = make_env(env_id)
    algorithm = _sb3_algorithm_class(model_path, data)
    custom = None if allow_pickle else _unpickled_replacements(model_path, data, env, algorithm)
    model = algorithm.load(model_path, device="cpu", custom_objects=custom)
    for name, model_space, env_space in (
        ("observation", model.observation_space, env.observation_space),
        ("action", model.action_space, env.action_space),
    ):
        if model_space.shape != env_space.shape or type(model_space) is not type(env_space):
            raise ValueError(
                f"{model_path}: field '{name}_space': the model was trained on {model_space}, "
                f"but {env_id} has {env_space}. Fix: pass the env the model was trained on"
            )
    normalize = _obs_normalizer(find_obs_stats(model_path, allow_pickle), env)

    def act(obs: np.ndarray) -> np.ndarray:
        return model.predict(normalize(obs), deterministic=deterministic)[0]

    return CallablePolicy(act)


def _obs_normalizer(stats_path: Path | None, env: Any) -> Any:
    """VecNormalize's observation transform, from an `.npz` (or a trusted `.pkl`)."""
    if stats_path is None:
        return lambda obs: obs
    if stats_path.suffix == ".pkl":
        from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

        normalizer = VecNormalize.load(str(stats_path), DummyVecEnv([lambda: env]))
        normalizer.training = False
        return normalizer.normalize_obs
    try:
        with np.load(stats_path, allow_pickle=False) as stats:
            mean, var = stats["mean"], stats["var"]
            clip = float(stats["clip_obs"]) if "clip_obs" in stats else 10.0  # SB3's defaults
            epsilon = float(stats["epsilon"]) if "epsilon" in stats else 1e-8
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(
            f"{stats_path}: not observation statistics ({err}). Fix: an .npz with arrays "
            "'mean' and 'var'"
        ) from None
    return lambda obs: np.clip((obs - mean) / np.sqrt(var + epsilon), -clip, clip)


def make_policy(
    policy: str,
    env_id: str,
    num_envs: int,
    seed: int | None,
    deterministic: bool = True,
    allow_pickle: bool = False,
) -> Policy:
    """Resolve `--policy`: `random`, an SB3 `.zip`, or a seqrl run directory."""
    from seqrl.envs import RandomPolicy, make_env

    if policy == "random":
        return RandomPolicy(make_env(env_id).action_space, num_envs, seed)
    path = Path(policy).expanduser()
    if path.suffix == ".zip":
        return load_sb3_policy(path, env_id, deterministic, allow_pickle)
    if path.is_dir():
        from seqrl.export import load_policy

        return load_policy(path, num_envs=num_envs)
    raise ValueError(
        f"--policy {policy!r}: not 'random', an existing SB3 .zip file or a seqrl run directory. "
        "Fix: pass one of those (train an SB3 expert with --train-sb3 ppo --steps N)"
    )


def train_sb3(
    algo: str,
    env_id: str,
    steps: int,
    out_dir: str | Path,
    seed: int = 0,
    algo_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Train an SB3 PPO or SAC agent (SB3 defaults; PPO with VecNormalize) and save it.

    Returns the `.zip`; PPO's observation statistics go to `<stem>-vecnormalize.pkl` beside it.
    """
    import stable_baselines3 as sb3
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from seqrl.envs import make_env

    algo = algo.lower()
    if algo not in SB3_ALGOS:
        raise ValueError(f"--train-sb3 {algo!r}: choose one of {SB3_ALGOS}")
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    venv: Any = DummyVecEnv([lambda: make_env(env_id)])
    if algo == "ppo":
        venv = VecNormalize(venv, norm_obs=True, norm_reward=True)
    cls = sb3.PPO if algo == "ppo" else sb3.SAC
    model = cls("MlpPolicy", venv, seed=seed, device="cpu", **(algo_kwargs or {}))

    class _Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = tqdm(total=steps, unit="step", desc=f"train {algo}", disable=not progress)

        def _on_step(self) -> bool:
            self.bar.update(self.training_env.num_envs)
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    model.learn(total_timesteps=steps, callback=_Progress())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / f"{env_id.replace('/', '_')}-{algo}-{steps}.zip"
    model.save(model_path)
    if isinstance(venv, VecNormalize):  # the .npz is what `collect` reads without pickles
        venv.save(str(model_path.with_name(f"{model_path.stem}-vecnormalize.pkl")))
        np.savez(
            model_path.with_name(model_path.stem + OBS_STATS_SUFFIX),
            mean=venv.obs_rms.mean,
            var=venv.obs_rms.var,
            clip_obs=venv.clip_obs,
            epsilon=venv.epsilon,
        )
    return model_path


# ---------------------------------------------------------------------------------------- rollout


def record_episodes(
    env_id: str,
    policy: Policy,
    episodes: int,
    num_envs: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, np.ndarray]]:
    """Run `policy` in `num_envs` envs until the first `episodes` started episodes finished.

    Returns them in start order, each as a dict for `EpisodeStore.from_episodes`.
    """
    from seqrl.envs import final_observations, make_vector_env

    if episodes < 1 or num_envs < 1:
        raise ValueError(f"need episodes >= 1 and num_envs >= 1, got {episodes}, {num_envs}")
    envs = make_vector_env(env_id, num_envs, seed=seed)
    act_dtype = envs.single_action_space.dtype
    obs, _ = envs.reset(seed=seed)
    policy.reset()
    tickets: list[int | None] = [i if i < episodes else None for i in range(num_envs)]
    next_ticket = min(num_envs, episodes)
    steps: list[dict[str, list]] = [_empty_episode() for _ in range(num_envs)]
    finished: dict[int, dict[str, np.ndarray]] = {}
    prev_reward: np.ndarray | None = None
    bar = tqdm(total=episodes, unit="ep", desc=f"collect {env_id}", disable=not progress)
    start, env_steps, last_update = time.perf_counter(), 0, 0.0
    try:
        while len(finished) < episodes:
            action = policy.act(obs, prev_reward).action
            action = action.cpu().numpy() if isinstance(action, torch.Tensor) else action
            action = np.asarray(action, dtype=act_dtype)  # (N, *act_shape)
            next_obs, reward, terminated, truncated, infos = envs.step(action)
            done = np.logical_or(terminated, truncated)  # (N,)
            for i in range(num_envs):
                if tickets[i] is not None:
                    rec = steps[i]
                    rec["observations"].append(np.array(obs[i], copy=True))
                    rec["actions"].append(action[i])
                    rec["rewards"].append(reward[i])
                    rec["terminations"].append(bool(terminated[i]))
                    rec["truncations"].append(bool(truncated[i]))
            if done.any():
                last_obs = final_observations(next_obs, infos, done)  # (N, *obs_shape)
                for i in np.flatnonzero(done):
                    ticket = tickets[i]
                    if ticket is not None:
                        finished[ticket] = _stack_episode(steps[i], last_obs[i])
                        bar.update(1)
                    steps[i] = _empty_episode()
                    tickets[i] = next_ticket if next_ticket < episodes else None
                    next_ticket += int(next_ticket < episodes)
                policy.reset(done)
            prev_reward = np.where(done, 0.0, reward).astype(np.float32)  # (N,)
            obs = next_obs
            env_steps += num_envs
            elapsed = time.perf_counter() - start
            if elapsed - last_update > 0.5 or len(finished) == episodes:
                bar.set_postfix(steps_per_s=f"{env_steps / elapsed:.0f}", refresh=False)
                last_update = elapsed
    finally:
        bar.close()
        envs.close()
    return [finished[t] for t in range(episodes)]


def _empty_episode() -> dict[str, list]:
    return {k: [] for k in ("observations", "actions", "rewards", "terminations", "truncations")}


def _stack_episode(rec: dict[str, list], final_obs: np.ndarray) -> dict[str, np.ndarray]:
    episode = {key: np.stack(values) for key, values in rec.items()}
    episode["final_observation"] = np.array(final_obs, copy=True)
    return episode


# ---------------------------------------------------------------------------------------- command


def collect(
    env_id: str,
    policy: str | None,
    episodes: int,
    out: str | Path,
    *,
    num_envs: int = 4,
    seed: int = 0,
    deterministic: bool = True,
    train_sb3_algo: str | None = None,
    train_steps: int = 100_000,
    sb3_dir: str | Path = "runs/sb3",
    sb3_kwargs: dict[str, Any] | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    allow_pickle: bool = False,
) -> CollectResult:
    """`seqrl collect`: record `episodes` episodes of `policy` in `env_id` and write `out`.

    `out` is a Minari id (local Minari root), a Minari folder or a `.hdf5` / `.h5` path (D4RL
    layout), as `save_dataset` takes it; it is checked before anything runs. With `train_sb3_algo` ("ppo" or "sac") an SB3 agent is trained
    for `train_steps` steps first, saved under `sb3_dir`, and used as the policy (`policy` must
    then be None; `sb3_kwargs` go to the SB3 constructor). `deterministic` applies to SB3
    policies. Reference scores default to D4RL's only for the env versions D4RL recorded with
    (`seqrl.envs.scores.d4rl_reference_scores`); pass `ref_min_score` / `ref_max_score` otherwise. More envs than episodes would only idle, so `num_envs` is capped.
    """
    from seqrl.envs import check_env_id, d4rl_reference_scores, make_env

    check_env_id(env_id)
    if episodes < 1 or num_envs < 1:
        raise ValueError(f"--episodes and --num-envs must be >= 1, got {episodes}, {num_envs}")
    num_envs = min(num_envs, episodes)
    out_text = str(out)
    to_hdf5 = Path(out_text).suffix.lower() in HDF5_SUFFIXES
    out_path = check_save_target(out_text, overwrite)
    if (policy is None) == (train_sb3_algo is None):
        raise ValueError(
            "pass exactly one of --policy (random, an SB3 .zip, a run directory) and "
            "--train-sb3 ppo|sac"
        )
    checkpoint = None
    if train_sb3_algo is not None:
        checkpoint = train_sb3(
            train_sb3_algo, env_id, train_steps, sb3_dir, seed, sb3_kwargs, progress
        )
        policy = str(checkpoint)
    assert policy is not None
    acting = make_policy(policy, env_id, num_envs, seed, deterministic, allow_pickle)
    episode_dicts = record_episodes(env_id, acting, episodes, num_envs, seed, progress)

    if ref_min_score is None and ref_max_score is None:
        ref = d4rl_reference_scores(env_id)
        if ref is not None:
            ref_min_score, ref_max_score = ref.min_score, ref.max_score
    env = make_env(env_id)
    description = f"{episodes} episodes of {policy} on {env_id} (seed {seed}, {num_envs} envs)"
    metadata = StoreMetadata(
        env_id=env_id,
        dataset_id=out_path.stem if to_hdf5 else out_text,
        ref_min_score=ref_min_score,
        ref_max_score=ref_max_score,
        observation_space=env.observation_space,
        action_space=env.action_space,
        source=f"collect({env_id}, {policy})",
        extra={"algorithm_name": f"seqrl collect: {policy}", "description": description},
    )
    store = EpisodeStore.from_episodes(episode_dicts, metadata)
    path = save_dataset(store, out_text, overwrite=overwrite)
    return CollectResult(store=store, path=path, policy=policy, sb3_checkpoint=checkpoint)

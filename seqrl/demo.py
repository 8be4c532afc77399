"""`make demo`: the main job on an embedded default.

Until the Decision Transformer lands, the demo evaluates a uniform-random policy on Hopper-v5
over parallel envs and prints its D4RL-normalized score (near 0 by construction).
"""

from __future__ import annotations

from seqrl.envs import RandomPolicy, evaluate, make_env


def main() -> None:
    env_id, episodes, num_envs = "Hopper-v5", 20, 10
    probe = make_env(env_id)
    policy = RandomPolicy(probe.action_space, num_envs, seed=0)
    probe.close()
    print(f"seqrl demo: random policy on {env_id}, {episodes} episodes over {num_envs} envs")
    result = evaluate(policy, env_id, episodes, num_envs, seed=0, progress=True)
    print(result.table())


if __name__ == "__main__":
    main()

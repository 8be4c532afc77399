"""seqrl: reinforcement learning with sequence-model policies.

Contracts live in `seqrl.core`; networks in `seqrl.nn`; algorithms in `seqrl.agents`; data in
`seqrl.buffers`; Gymnasium environments and evaluation in `seqrl.envs`; loops in `seqrl.train`.
"""

__version__ = "0.1.0"

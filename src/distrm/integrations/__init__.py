"""Glue for RL frameworks that load reward functions their own way.

* :mod:`distrm.integrations.verl` -- a verl custom reward function (``compute_score``).

TRL takes distrm reward functions directly (``distrm.rl.rewards.DistributionalRewardFunction``
in process, ``distrm.serve.client.RewardClient`` / ``AsyncRewardClient`` over HTTP); OpenRLHF
posts to ``distrm serve``'s ``/get_reward``. See docs/INTEGRATIONS.md.
"""

"""distrm: distributional and uncertainty-aware reward models for RLHF.

Pipeline (one module per step, see docs/ARCHITECTURE.md):
data -> features -> heads -> models -> risk -> {eval, rl, serve}; training apart.
"""

__version__ = "0.1.0"

from distrm.distribution import RewardDistribution  # noqa: E402,F401


def __getattr__(name: str):  # lazy: ``from distrm import AutoRewardModel`` without importing every model class up front
    if name == "AutoRewardModel":
        from distrm.models.auto import AutoRewardModel

        return AutoRewardModel
    raise AttributeError(f"module 'distrm' has no attribute {name!r}")

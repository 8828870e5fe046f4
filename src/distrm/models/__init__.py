"""Step 4 of the pipeline: reward models, each a backbone + heads behind one protocol
(:mod:`distrm.models.base`), loaded by one loader (:class:`AutoRewardModel`)."""

_LAZY = {
    "AutoRewardModel": "distrm.models.auto",
    "RewardModel": "distrm.models.base",
    "ScoreOutput": "distrm.models.base",
    "DistributionalRewardModel": "distrm.models.qrm",
    "EnsembleRewardModel": "distrm.models.bt_ensemble",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distrm.models' has no attribute {name!r}")

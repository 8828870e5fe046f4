"""Run ``distrm finetune-backbone`` and SIGKILL it right after optimiser step K (no clean-up,
no final save: what a preempted job or an out-of-memory kill leaves).

Usage: ``python kill_finetune.py K -- <distrm finetune-backbone arguments>``

A ``TrainerCallback`` added to every ``transformers.Trainer`` built in this process kills the
process at the end of step K (``on_step_end``: after the optimiser step, before that step's
checkpoint, if any). The caller checks the exit status (-SIGKILL), then resumes the run.
"""

from __future__ import annotations

import os
import signal
import sys

import torch

torch.set_num_threads(1)

from transformers import Trainer, TrainerCallback  # noqa: E402

from distrm.cli import main  # noqa: E402


class KillAfterStep(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def run() -> int:
    k, sep, *argv = sys.argv[1:]
    if sep != "--":
        raise SystemExit("usage: kill_finetune.py K -- <finetune-backbone arguments>")
    real_init = Trainer.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        self.add_callback(KillAfterStep(int(k)))

    Trainer.__init__ = init
    return main(["finetune-backbone", *argv])


if __name__ == "__main__":
    raise SystemExit(run())

"""Compatibility: experiment files moved to `rllib_lamo.experiments.experiment_file`.

Tune pickles the trainable of `rllib train file` runs into the experiment folder; for RLlib's
own offline algorithms that class mixes in `OfflineRestoreMixin`, which experiments started
before the move name by this module's path. `--resume` of such runs needs it here.
"""

from __future__ import annotations

from rllib_lamo.checkpoints import OfflineRestoreMixin

__all__ = ["OfflineRestoreMixin"]

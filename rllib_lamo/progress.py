"""Compatibility: the progress table moved to `rllib_lamo.experiments.progress`.

Tune pickles its callbacks into the experiment folder; experiments started before the move
name `ProgressTable` by this module's path, and `--resume` of them needs it here.
"""

from __future__ import annotations

from rllib_lamo.experiments.progress import ProgressTable

__all__ = ["ProgressTable"]

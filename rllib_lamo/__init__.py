"""rllib_lamo: LaMo (Language Models for Motion Control) as a Ray RLlib offline algorithm.

    from rllib_lamo import LaMoConfig
    algo = LaMoConfig().offline_data(input_="datasets/hopper-medium-v5").build_algo()

Importing the package is cheap; the algorithm classes load (with Ray RLlib) on first use.
It registers the package's gymnasium envs (``Reacher2d-v0``; see :mod:`rllib_lamo.envs`).
"""

from __future__ import annotations

from typing import Any

from rllib_lamo.envs import register_envs

__all__ = ["LaMo", "LaMoConfig"]
__version__ = "0.1.0"

register_envs()


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rllib_lamo import lamo

        return getattr(lamo, name)
    raise AttributeError(f"module 'rllib_lamo' has no attribute {name!r}")

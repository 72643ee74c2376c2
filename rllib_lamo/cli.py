"""Compatibility: the `rllib` command moved to `rllib_lamo.experiments.cli`.

Kept so that ``python -m rllib_lamo.cli`` and console scripts installed before the move
(entry point ``rllib_lamo.cli:main``) keep working.
"""

from __future__ import annotations

import sys

from rllib_lamo.experiments.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())

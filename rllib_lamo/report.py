"""Compatibility: `lamo-report` moved to `rllib_lamo.experiments.report`.

Kept so that console scripts installed before the move (entry point
``rllib_lamo.report:main``) keep working.
"""

from __future__ import annotations

import sys

from rllib_lamo.experiments.report import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())

"""Compatibility: MLflow tracking moved to `rllib_lamo.experiments`.

Already-logged MLflow ``policy`` models name `LaMoPolicyModel` by this module's path (MLflow
pickles the model class), and Tune experiments started before the move pickled
`LaMoMLflowCallback` under it: loading those models and resuming those runs needs them here.
"""

from __future__ import annotations

from rllib_lamo.experiments.policy_model import LaMoPolicyModel
from rllib_lamo.experiments.tracking import LaMoMLflowCallback

__all__ = ["LaMoMLflowCallback", "LaMoPolicyModel"]

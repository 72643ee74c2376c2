"""Framework-agnostic part of LaMo's Learner: metric and optimizer names, the per-step
learning-rate warmup and the state that makes a resumed run continue exactly.

RLlib ticks learning-rate schedules once per `update()` (which runs many gradient steps in
offline training), so LaMo counts gradient steps itself and checkpoints the count together
with the text corpus' position.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
from ray.rllib.core.learner.learner import Learner
from ray.rllib.utils.annotations import override
from ray.rllib.utils.typing import ModuleID, StateDict

# Metric names live in `rllib_lamo.metrics` (the application reads them there); imported
# here under the names the learners use.
from rllib_lamo.metrics import ACTION_LOSS_KEY as ACTION_LOSS_KEY
from rllib_lamo.metrics import GRADIENT_STEPS_KEY as GRADIENT_STEPS_KEY
from rllib_lamo.metrics import GRADIENTS_GLOBAL_NORM_KEY as GRADIENTS_GLOBAL_NORM_KEY
from rllib_lamo.metrics import LANGUAGE_LOSS_KEY as LANGUAGE_LOSS_KEY
from rllib_lamo.metrics import LR_HEADS_KEY as LR_HEADS_KEY
from rllib_lamo.metrics import LR_LM_KEY as LR_LM_KEY
from rllib_lamo.metrics import TOTAL_LOSS_KEY as TOTAL_LOSS_KEY
from rllib_lamo.metrics import WARMUP_FACTOR_KEY as WARMUP_FACTOR_KEY
from rllib_lamo.text_corpus import TextCorpus

# Optimizer names, registered per module (RLlib prefixes them with the module ID).
LM_OPTIMIZER = "lm"
HEADS_OPTIMIZER = "heads"


# The Learner-state entry holding the step counter and the text corpora's positions.
COMPONENT_LAMO = "lamo"


class LaMoLearner(Learner):
    """Adds LaMo's gradient-step counter and auxiliary text corpora to RLlib's Learner."""

    @override(Learner)
    def build(self) -> None:
        super().build()
        self._gradient_steps = 0
        self._text_corpora: dict[ModuleID, TextCorpus] = {
            module_id: self._build_text_corpus(module_id)
            for module_id in self.module.keys()
            if self._uses_language_loss(module_id)
        }

    def _uses_language_loss(self, module_id: ModuleID) -> bool:
        """The text batch is skipped unless lambda > 0 and the LM has weights to train."""
        config = self.config.get_config_for_module(module_id)
        return config.language_loss_coeff > 0 and config.finetune != "frozen"

    def _build_text_corpus(self, module_id: ModuleID) -> TextCorpus:
        config = self.config.get_config_for_module(module_id)
        # Every learner draws its own text stream: identical streams on all DDP learners would
        # shrink the effective text batch to that of a single learner.
        seed = np.random.SeedSequence([config.seed or 0, self._learner_index])
        return TextCorpus.from_spec(
            config.text_corpus,
            self.module[module_id].unwrapped().tokenizer,
            block_len=config.text_block_len,
            batch_size=config.text_batch_size,
            seed=int(seed.generate_state(1)[0]),
        )

    @property
    def gradient_steps(self) -> int:
        """Gradient steps taken over this learner's lifetime (restored from checkpoints)."""
        return self._gradient_steps

    def warmup_factor(self) -> float:
        """Linear warmup factor of the upcoming gradient step: min(1, (step + 1) / warmup)."""
        warmup_steps = self.config.warmup_steps
        if warmup_steps <= 0:
            return 1.0
        return min(1.0, (self._gradient_steps + 1) / warmup_steps)

    @override(Learner)
    def get_state(
        self,
        components: str | Collection[str] | None = None,
        *,
        not_components: str | Collection[str] | None = None,
        **kwargs: Any,
    ) -> StateDict:
        state = super().get_state(components, not_components=not_components, **kwargs)
        if self._check_component(COMPONENT_LAMO, components, not_components):
            state[COMPONENT_LAMO] = {
                "gradient_steps": self._gradient_steps,
                "learner_index": self._learner_index,
                "text_corpora": {mid: c.get_state() for mid, c in self._text_corpora.items()},
            }
        return state

    @override(Learner)
    def set_state(self, state: StateDict) -> None:
        super().set_state(state)
        if COMPONENT_LAMO not in state:
            return
        lamo_state = state[COMPONENT_LAMO]
        self._gradient_steps = int(lamo_state["gradient_steps"])
        # A LearnerGroup checkpoints learner 0 only: the other learners keep their own text
        # streams rather than all continuing learner 0's.
        if lamo_state["learner_index"] == self._learner_index:
            for module_id, corpus_state in lamo_state["text_corpora"].items():
                if module_id in self._text_corpora:
                    self._text_corpora[module_id].set_state(corpus_state)

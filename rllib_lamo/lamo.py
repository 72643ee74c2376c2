"""LaMo: a Decision Transformer on a pre-trained, LoRA-adapted causal language model.

`LaMoConfig` holds the paper's recipe as defaults (Shi et al., ICLR 2024, Tables 6-7);
`LaMo` is the offline `Algorithm` that streams trajectory windows from Parquet shards through
Ray Data into the learner(s) and evaluates on remote env runners at several target returns.
"""

from __future__ import annotations

import copy
import os
import pathlib
import pickle
import random
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import ray
import torch
from ray import tune
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    EVALUATION_RESULTS,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    OFFLINE_SAMPLING_TIMER,
    TIMERS,
)
from ray.rllib.utils.typing import ResultDict, StateDict
from ray.tune.execution.placement_groups import PlacementGroupFactory

from rllib_lamo import config_checks
from rllib_lamo.checkpoints import (
    check_checkpoint_folder,
    restore_offline,
    write_folder_atomically,
)
from rllib_lamo.connectors.decision_context import decision_context_connector
from rllib_lamo.data.dataset import TrajectoryDataset, dataset_folder
from rllib_lamo.evaluation import evaluate_target_returns, target_key
from rllib_lamo.iteration_times import (
    DATA_S,
    EVALUATION_S,
    ITERATION_S,
    LEARNER_S,
    STEPS_PER_S,
    WINDOWS_PER_S,
)
from rllib_lamo.metrics import VALIDATION_ACTION_LOSS, VALIDATION_RESULTS
from rllib_lamo.offline_data import LaMoOfflineData
from rllib_lamo.scores import PAPER_SCORE_KEY, TargetScore, paper_score, target_scores
from rllib_lamo.storage import is_uri

EMBEDDING_KINDS = ("mlp", "linear")
# What `training(language_model="dt")` sets unless the same call says otherwise: the original
# Decision Transformer trains everything, with linear embeddings and no text.
_DT_BASELINE_RECIPE = {"finetune": "full", "embedding": "linear", "language_loss_coeff": 0.0}
# `mixed_precision` values: autocast dtypes, or "auto" (bf16 where the device has it, else fp16).
MIXED_PRECISION_MODES = ("bf16", "fp16", "auto")


class LaMoConfig(AlgorithmConfig):
    """Configuration of a LaMo run; every LaMo knob lives in `.training()`.

    .. code-block:: python

        config = (
            LaMoConfig()
            .environment("Hopper-v5")
            .offline_data(input_="datasets/hopper-medium-v5")
            .training(language_model="smollm2-135m", lm_num_layers=4, data_ratio=0.1)
            .evaluation(evaluation_interval=5, evaluation_num_env_runners=2)
        )
        algo = config.build()
    """

    def __init__(self, algo_class: type | None = None):
        super().__init__(algo_class=algo_class or LaMo)
        self._is_online = False

        # The language model and how it is fine-tuned (paper: GPT-2 small, LoRA r16/a32 on c_attn).
        self.language_model = "gpt2"
        self.lm_num_layers: int | None = None
        self.lm_pretrained = True
        self.finetune = "lora"
        self.lora_rank = 16
        self.lora_alpha = 32
        self.lora_dropout = 0.1
        self.lora_target_modules: list[str] | None = None
        # Trajectory tokens.
        self.embedding = "mlp"
        self.context_len = 20
        self.max_ep_len = 1000
        self.rtg_scale = 1000.0
        self.dropout = 0.1
        # Auxiliary language-modelling loss (lambda; 0 turns it off).
        self.language_loss_coeff = 0.1
        self.text_corpus = "builtin"
        self.text_block_len = 1024
        self.text_batch_size = 2
        # Optimisation: AdamW, linear warmup per gradient step, then constant.
        self.lr = 1e-4
        self.lm_lr = 1e-4
        self.weight_decay = 1e-5
        self.adam_eps = 1e-6
        self.warmup_steps = 2500
        self.grad_clip = 0.25
        self.grad_clip_by = "global_norm"
        # Speed: autocast dtype of the learner's forward passes (None: float32 throughout).
        self.mixed_precision: str | None = None
        self.train_batch_size_per_learner = 64
        # Data: LaMo's low-data setting keeps a seeded random subset of whole trajectories.
        self.data_ratio = 1.0
        self.data_subset_seed = 0
        # A held-out check without a simulator: this share of the (kept) episodes is never
        # trained on; the action loss on a fixed set of their windows is logged every iteration.
        self.validation_fraction = 0.0
        self.validation_num_windows = 256
        # Evaluation: one set of episodes per target return (in raw, unscaled return units).
        self.target_returns: list[float] = [3600.0, 1800.0]
        self.custom_evaluation_function = evaluate_target_returns
        self.evaluation_duration = 20  # episodes per target return, as in the paper
        # The paper reports each target's mean over its last 8 evaluations (the last 20K of
        # 100K steps, evaluated every 2.5K), then the best target.
        self.paper_score_last_n_evals = 8
        # Discrete actions (Atari) are drawn from the policy's softmax, as DT's and LaMo's
        # Atari evaluations do; False takes the most likely one.
        self.sample_discrete_actions = True
        # Evaluation episodes (all targets mixed) run side by side on each evaluation runner's
        # sub-envs, with one model call per env step for all of them.
        self.num_envs_per_env_runner = 20
        # Evaluation contexts need K steps of history, also when RLlib cuts long episodes.
        self.episode_lookback_horizon = self.context_len
        # The policy is trained on the dataset's raw actions: no rescaling, only clipping.
        self.normalize_actions = False
        self.clip_actions = True

        # Offline defaults: gradient steps per `train()` call; windows are re-sampled every epoch.
        self.dataset_num_iters_per_learner = 100
        self.offline_data_class = LaMoOfflineData
        # Shard paths travel with the rows, so a bad row's error can name its file.
        self.input_read_method_kwargs = {"include_paths": True}
        self.materialize_data = False
        self.materialize_mapped_data = False
        self.evaluation_duration_unit = "episodes"
        # What `input_` names, read once by `validate()` and handed to the offline data.
        self._trajectory_dataset: TrajectoryDataset | None = None

    @override(AlgorithmConfig)
    def training(
        self,
        *,
        language_model: str = NotProvided,
        lm_num_layers: int | None = NotProvided,
        lm_pretrained: bool = NotProvided,
        finetune: str = NotProvided,
        lora_rank: int = NotProvided,
        lora_alpha: int = NotProvided,
        lora_dropout: float = NotProvided,
        lora_target_modules: list[str] | None = NotProvided,
        embedding: str = NotProvided,
        context_len: int = NotProvided,
        max_ep_len: int = NotProvided,
        rtg_scale: float = NotProvided,
        dropout: float = NotProvided,
        language_loss_coeff: float = NotProvided,
        text_corpus: str = NotProvided,
        text_block_len: int = NotProvided,
        text_batch_size: int = NotProvided,
        lm_lr: float = NotProvided,
        weight_decay: float = NotProvided,
        adam_eps: float = NotProvided,
        warmup_steps: int = NotProvided,
        data_ratio: float = NotProvided,
        data_subset_seed: int = NotProvided,
        validation_fraction: float = NotProvided,
        validation_num_windows: int = NotProvided,
        target_returns: list[float] = NotProvided,
        paper_score_last_n_evals: int = NotProvided,
        sample_discrete_actions: bool = NotProvided,
        mixed_precision: str | None = NotProvided,
        **kwargs: Any,
    ) -> LaMoConfig:
        """Sets LaMo's settings; `lr` (embeddings and heads) and the rest pass to RLlib.

        Args:
            language_model: HF id (``gpt2``), local dir, ``.gguf`` file or ``smollm2-135m``;
                or ``"dt"``, the paper's Decision Transformer baseline: the original DT (GPT-2
                with 3 blocks, hidden 128, 1 head), random init, fully trained, linear
                embeddings and tanh head. ``training(language_model="dt")`` sets
                ``finetune="full"``, ``embedding="linear"`` and ``language_loss_coeff=0``
                unless given in the same call; it has no tokenizer, so a language loss or
                LoRA is refused.
            lm_num_layers: Keep only the first N transformer blocks (None: all).
            lm_pretrained: False = the chosen LM's architecture, random init (the paper's
                "same architecture as LaMo, random init" ablation, next to ``"dt"``).
            finetune: ``lora`` (paper), ``full`` or ``frozen`` (ablations).
            lora_rank, lora_alpha, lora_dropout, lora_target_modules: LoRA settings
                (None targets: q, k and v, each its own adapter; GPT-2's fused c_attn is split).
            embedding: ``mlp`` (paper) or ``linear`` (ablation) return/state/action embeddings.
            context_len: K, the number of (return, state, action) steps in a window.
            max_ep_len: Size of the learned timestep embedding.
            rtg_scale: Returns-to-go are divided by this (1000 for MuJoCo).
            dropout: Dropout of the embeddings and of the LM.
            language_loss_coeff: lambda of the auxiliary language loss (0 disables it).
            text_corpus: ``builtin`` (offline), ``wikitext-103`` or a text file/folder.
            text_block_len, text_batch_size: Token blocks per gradient step for that loss.
            lm_lr: Learning rate of the LM's trainable weights (LoRA or all of them).
            weight_decay, adam_eps: AdamW settings, both optimizers.
            warmup_steps: Linear learning-rate warmup, counted in gradient steps.
            data_ratio: Keep this fraction of whole trajectories (LaMo: 0.005 to 1).
            data_subset_seed: Seed of that subset (separate from `seed`, so that several
                training seeds share one subset, as in the paper).
            validation_fraction: Hold out this share of the kept episodes (seeded by
                `data_subset_seed`, at least one episode); each iteration logs the action loss
                on `validation_num_windows` fixed windows of them (result key
                ``validation/action_loss``), so over-fitting shows without a simulator. 0: off.
            target_returns: Evaluation targets in raw return units, e.g. [3600, 1800].
            paper_score_last_n_evals: N of the paper's reported score (result key
                ``evaluation/paper_score``): each target's mean over the last N evaluations
                (all of them while fewer), then the best target. Paper: 8 (last 20K of 100K
                steps, evaluated every 2.5K): set N to cover the same share of your run.
            sample_discrete_actions: Evaluation draws discrete actions from the softmax (DT's
                and LaMo's Atari code; each episode from its own stream seeded by its env
                seed, so scores do not depend on how many episodes run side by side); False:
                the argmax. Continuous actions are always the deterministic prediction.
            mixed_precision: Autocast the learner's forward passes (trajectory and text) to
                ``bf16``, or ``fp16`` with a gradient scaler, or ``auto`` (bf16 where the
                device supports it, else fp16); None trains in float32. Weights, optimizer
                state and losses stay float32; env runners always act in float32. For
                `torch.compile`, use RLlib's ``.framework(torch_compile_learner=True)``.
        """
        settings = {k: v for k, v in locals().items() if k not in ("self", "kwargs", "__class__")}
        super().training(**kwargs)
        from rllib_lamo.language_models import DT_BASELINE

        if language_model == DT_BASELINE:
            for name, value in _DT_BASELINE_RECIPE.items():
                if settings[name] is NotProvided:
                    settings[name] = value
        for name, value in settings.items():
            if value is not NotProvided:
                setattr(self, name, value)
        self.episode_lookback_horizon = max(self.episode_lookback_horizon, self.context_len)
        return self

    @override(AlgorithmConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        from rllib_lamo.torch.lamo_torch_rl_module import LaMoTorchRLModule

        return RLModuleSpec(module_class=LaMoTorchRLModule)

    @override(AlgorithmConfig)
    def get_default_learner_class(self) -> type:
        from rllib_lamo.torch.lamo_torch_learner import LaMoTorchLearner

        return LaMoTorchLearner

    @property
    @override(AlgorithmConfig)
    def _model_config_auto_includes(self) -> dict[str, Any]:
        """What the RLModule needs to build itself, from this config."""
        from rllib_lamo.torch.lamo_torch_rl_module import DEFAULT_LM_INIT_SEED

        return super()._model_config_auto_includes | {
            "language_model": self.language_model,
            "lm_num_layers": self.lm_num_layers,
            "lm_pretrained": self.lm_pretrained,
            "finetune": self.finetune,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "lora_target_modules": self.lora_target_modules,
            "embedding": self.embedding,
            "context_len": self.context_len,
            "max_ep_len": self.max_ep_len,
            "dropout": self.dropout,
            # Each training seed draws its own random init (`lm_pretrained=False`, "dt"), the
            # same in every process of a run.
            "lm_init_seed": DEFAULT_LM_INIT_SEED + (self.seed or 0),
            "mixed_precision": self.mixed_precision,
        }

    def _check_dt_baseline(self) -> None:
        """The DT baseline's own rules, checked first: they need no file and no model."""
        from rllib_lamo.language_models import DT_BASELINE

        if self.language_model != DT_BASELINE:
            return
        if self.language_loss_coeff > 0:
            self._value_error(
                f"`language_model={DT_BASELINE!r}` (the Decision Transformer baseline) has "
                "no tokenizer and no trained LM head, so it cannot have a language loss: "
                f"set `language_loss_coeff=0` (got {self.language_loss_coeff})."
            )
        if self.finetune != "full":
            self._value_error(
                f"`language_model={DT_BASELINE!r}` is trained from scratch: `finetune` must "
                f"be 'full', got {self.finetune!r}. For a randomly initialised LM with "
                "LoRA use your LM with `lm_pretrained=False`."
            )

    @override(AlgorithmConfig)
    def validate(self) -> None:
        self._check_dt_baseline()
        self._check_settings_before_ray()
        self._spaces_from_dataset_if_unset()
        self._let_ddp_skip_unused_lm_weights()
        super().validate()
        from rllib_lamo.language_models import FINETUNE_MODES

        if self.finetune not in FINETUNE_MODES:
            self._value_error(f"`finetune` must be one of {FINETUNE_MODES}, got {self.finetune!r}.")
        if self.embedding not in EMBEDDING_KINDS:
            self._value_error(
                f"`embedding` must be one of {EMBEDDING_KINDS}, got {self.embedding!r}."
            )
        if not 0.0 < self.data_ratio <= 1.0:
            self._value_error(f"`data_ratio` must be in (0, 1], got {self.data_ratio}.")
        if self.context_len < 1 or self.max_ep_len < 1:
            self._value_error("`context_len` and `max_ep_len` must be positive.")
        if self.language_loss_coeff < 0:
            self._value_error("`language_loss_coeff` must be >= 0.")
        if self.episode_lookback_horizon < self.context_len - 1:
            self._value_error("`episode_lookback_horizon` must be >= `context_len - 1`.")
        if self.mixed_precision not in (None, *MIXED_PRECISION_MODES):
            self._value_error(
                f"`mixed_precision` must be None or one of {MIXED_PRECISION_MODES}, got "
                f"{self.mixed_precision!r}."
            )
        if not self.target_returns:
            self._value_error("`target_returns` needs at least one target return.")
        if self.paper_score_last_n_evals < 1:
            self._value_error(
                f"`paper_score_last_n_evals` must be >= 1, got {self.paper_score_last_n_evals}."
            )
        if self.num_learners == 0 and not self.dataset_num_iters_per_learner:
            self._value_error(
                "With a local learner (`num_learners=0`) set the gradient steps per iteration: "
                "`config.offline_data(dataset_num_iters_per_learner=...)`."
            )

    @override(AlgorithmConfig)
    def build_env_to_module_connector(
        self, env: Any = None, spaces: Any = None, device: Any = None
    ):
        """RLlib's default pipeline, fed by the last-K decision context of each episode."""
        pipeline = super().build_env_to_module_connector(env=env, spaces=spaces, device=device)
        pipeline.prepend(decision_context_connector(self))
        return pipeline

    @override(AlgorithmConfig)
    def get_evaluation_config_object(self) -> AlgorithmConfig | None:
        # With remote evaluation runners a driver-side one would only hold another LM copy.
        eval_config = super().get_evaluation_config_object()
        if eval_config is not None and eval_config.num_env_runners > 0:
            eval_config.create_local_env_runner = False
        return eval_config

    def _check_settings_before_ray(self) -> None:
        """Kinds, ranges, env, LM and dataset: what would otherwise fail inside a trial."""
        problem = (
            config_checks.setting_problem(self)
            or config_checks.env_problem(self.env)
            or config_checks.language_model_problem(self.language_model, self.lm_num_layers)
        )
        if problem is None and self.input_ and self.input_ != "sampler":
            problem = config_checks.dataset_problem(self.trajectory_dataset(), self.env)
        if problem:
            self._value_error(problem)

    def _let_ddp_skip_unused_lm_weights(self) -> None:
        """Fully fine-tuned without text, the LM's token embeddings and head get no gradient.

        DDP then waits forever for them unless told to look for unused parameters; with the
        language loss on, that same flag breaks DDP (the text pass runs outside its forward).
        """
        if (
            self.num_learners > 1
            and self.finetune == "full"
            and self.language_loss_coeff == 0
            and "find_unused_parameters" not in self.torch_ddp_kwargs
        ):
            self.torch_ddp_kwargs = {**self.torch_ddp_kwargs, "find_unused_parameters": True}

    @override(AlgorithmConfig)
    def to_dict(self) -> dict[str, Any]:
        """Settings only: the dataset read from `input_` is derived, re-read by each trial."""
        config = super().to_dict()
        config.pop("_trajectory_dataset", None)
        return config

    def trajectory_dataset(self) -> TrajectoryDataset:
        """The dataset `input_` names; read once (in `validate()`) and kept with the config."""
        cached = self._trajectory_dataset
        if cached is not None and cached.folder == dataset_folder(self.input_):
            return cached
        dataset = TrajectoryDataset.read(self.input_)
        if not self._is_frozen:
            self._trajectory_dataset = dataset
        return dataset

    def _spaces_from_dataset_if_unset(self) -> None:
        """Training needs no env: without one, the dataset's metadata names the spaces."""
        if not self.input_ or self.input_ == "sampler":
            return
        dataset = self.trajectory_dataset()
        self.observation_space = self.observation_space or dataset.observation_space
        self.action_space = self.action_space or dataset.action_space


class LaMo(Algorithm):
    """Offline training of a LaMo policy; see `LaMoConfig`.

    Each `train()` call takes `dataset_num_iters_per_learner` gradient steps on batches of
    windows streamed from the episode shards; evaluation (when configured) rolls out the
    policy on remote env runners for every target return.
    """

    offline_data: LaMoOfflineData

    @classmethod
    @override(Algorithm)
    def get_default_config(cls) -> LaMoConfig:
        return LaMoConfig()

    @classmethod
    @override(Algorithm)
    def default_resource_request(
        cls, config: AlgorithmConfig | dict[str, Any]
    ) -> PlacementGroupFactory:
        """RLlib's placement, except that a local CPU learner gets the node's cores.

        RLlib gives a local learner (`num_learners=0`) one CPU unless `num_cpus_per_learner` is
        set, and Ray then pins the process to one thread: training ran 1.6x slower than the
        machine allows. Where the user left `num_cpus_per_learner` at "auto" and the learner
        has no GPU, the main process (which hosts the learner) asks for the node's cores,
        less what the other bundles (evaluation runners) need of the cluster's CPUs.
        """
        factory = super().default_resource_request(config)
        config = cls.get_default_config().update_from_dict(config)
        if not (
            config.num_learners == 0
            and config.num_cpus_per_learner == "auto"
            and config.num_gpus_per_learner == 0
        ):
            return factory
        main_bundle, *other_bundles = factory.bundles
        cpus = max(main_bundle.get("CPU", 1), local_learner_cpus(other_bundles))
        main_bundle = {**main_bundle, "CPU": cpus}
        return PlacementGroupFactory(
            bundles=[main_bundle, *other_bundles], strategy=factory.strategy
        )

    @override(Algorithm)
    def setup(self, config: AlgorithmConfig) -> None:
        super().setup(config)
        self._check_dataset_fits_env()
        summary = self.offline_data.summary
        self._set_observation_normalisation(summary.obs_mean, summary.obs_std)
        frames_ref = self.offline_data.frames_ref
        if frames_ref is not None:  # image windows carry frame indices; learners gather
            self.learner_group.foreach_learner(lambda learner: learner.set_frames(frames_ref))
        self._best_evaluation: dict[str, float] | None = None
        self._latest_evaluation: dict[str, Any] | None = None
        # Every evaluation's per-target scores, for the paper's last-N mean (kept in the state).
        self._score_history: list[list[TargetScore]] = []
        # This iteration's own times (see `iteration_times`), added to its result in `step()`.
        self._training_times: dict[str, float] = {}
        self._validation: dict[str, float] = {}
        self._evaluation_s = 0.0

    def _check_dataset_fits_env(self) -> None:
        """A dataset recorded on another env must fail here, not deep inside a rollout."""
        if self.eval_env_runner_group is None:
            return
        env_obs, env_act = self.eval_env_runner_group.get_spaces()[DEFAULT_MODULE_ID]
        data = self.offline_data
        for field, dataset_space, env_space in (
            ("observation_space", data.observation_space, env_obs),
            ("action_space", data.action_space, env_act),
        ):
            if dataset_space.shape != env_space.shape or type(dataset_space) is not type(env_space):
                raise ValueError(
                    f"{data.dataset.folder}/metadata.json: {field} is {dataset_space}, but the "
                    f"evaluation env {self.config.env!r} has {env_space}. Train on a dataset "
                    "recorded on this env, or set `env` to the dataset's env "
                    f"({data.dataset.env_id!r})."
                )

    def _set_observation_normalisation(self, mean: list[float], std: list[float]) -> None:
        """Puts the dataset's observation statistics into the module (they travel in its state)."""

        def assign(learner: Any) -> None:
            # `unwrapped()`: with num_learners > 1 the module is a DDP wrapper.
            module = learner.module[DEFAULT_MODULE_ID].unwrapped()
            module.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            module.obs_std.copy_(torch.as_tensor(std, dtype=torch.float32))

        self.learner_group.foreach_learner(assign)
        self._sync_evaluation_weights()

    def _sync_evaluation_weights(self) -> None:
        if self.eval_env_runner_group is not None:
            self.eval_env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group, inference_only=True
            )

    @override(Algorithm)
    def training_step(self) -> None:
        config = self.config
        num_steps = config.dataset_num_iters_per_learner
        global_batch = config.train_batch_size_per_learner * max(1, config.num_learners)
        started = time.perf_counter()
        with self.metrics.log_time((TIMERS, OFFLINE_SAMPLING_TIMER)):
            # A learner group shards a batch into contiguous pieces, one per learner: stacking
            # the steps' batches learner-major gives each learner its own windows per step.
            batches = [self.offline_data.sample(global_batch) for _ in range(num_steps)]
            training_batch = _learner_major_concat(batches, max(1, config.num_learners))
        self.metrics.log_value(
            NUM_ENV_STEPS_SAMPLED_LIFETIME, global_batch * num_steps, reduce="lifetime_sum"
        )
        sampled = time.perf_counter()
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            learner_results = self.learner_group.update(
                batch=training_batch,
                minibatch_size=config.train_batch_size_per_learner,
                num_epochs=1,
                shuffle_batch_per_epoch=False,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                        NUM_ENV_STEPS_SAMPLED_LIFETIME
                    )
                },
            )
        updated = time.perf_counter()
        self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)
        self._training_times = {
            DATA_S: sampled - started,
            LEARNER_S: updated - sampled,
            STEPS_PER_S: num_steps / (updated - started),
            WINDOWS_PER_S: global_batch * num_steps / (updated - started),
        }
        self.metrics.log_value("data_epoch", self.offline_data.epoch, window=1)
        self._validation = self._validation_losses()

    def _validation_losses(self) -> dict[str, float]:
        """The action loss on the held-out windows after this iteration's update (if any)."""
        batch = self.offline_data.validation_batch()
        if batch is None:
            return {}
        losses = (
            self.learner_group.foreach_learner(
                lambda learner: learner.validation_action_losses(batch)
            )
            .result_or_errors[0]
            .get()
        )
        return {VALIDATION_ACTION_LOSS: losses[DEFAULT_MODULE_ID]}

    @override(Algorithm)
    def evaluate(self, *args: Any, **kwargs: Any) -> ResultDict:
        """Evaluates every target return; adds the best score so far and the paper's score.

        The paper's score (`scores.paper_score`, under ``scores.PAPER_SCORE_KEY``) averages
        each target over the last `paper_score_last_n_evals` evaluations, then takes the best.
        """
        started = time.perf_counter()
        results = super().evaluate(*args, **kwargs)
        self._evaluation_s += time.perf_counter() - started
        best = results.get("best") if results else None
        if best:
            key = "normalised_score" if "normalised_score" in best else "return"
            if self._best_evaluation is None or best[key] > self._best_evaluation[key]:
                self._best_evaluation = {**best, "iteration": self.iteration + 1}
            results["best_so_far"] = dict(self._best_evaluation)
            self._score_history.append(
                target_scores(results[target_key(t)] for t in self.config.target_returns)
            )
            results[PAPER_SCORE_KEY] = paper_score(
                self._score_history,
                self.config.paper_score_last_n_evals,
                key_of_target=target_key,
            )
            results["evaluated_at_iteration"] = self.iteration + 1
            self._latest_evaluation = copy.deepcopy(results)
        return results

    @override(Algorithm)
    def step(self) -> ResultDict:
        """Adds the latest evaluation (RLlib's turns to NaN between them) and the times.

        The times (see `iteration_times`) split this iteration into data, learner, evaluation.
        """
        started = time.perf_counter()
        self._evaluation_s = 0.0
        evaluations_before = self._latest_evaluation
        results = super().step()
        results.update(
            self._training_times,
            **{EVALUATION_S: self._evaluation_s, ITERATION_S: time.perf_counter() - started},
        )
        if self._validation:
            results[VALIDATION_RESULTS] = dict(self._validation)
        if self._latest_evaluation is not None and self._latest_evaluation is evaluations_before:
            results[EVALUATION_RESULTS] = copy.deepcopy(self._latest_evaluation)
        return results

    @override(Algorithm)
    def cleanup(self) -> None:
        if self.offline_data is not None:
            self.offline_data.close()
        super().cleanup()

    @override(Algorithm)
    def get_state(self, *args: Any, **kwargs: Any) -> StateDict:
        state = super().get_state(*args, **kwargs)
        state["lamo"] = {
            "offline_data": self.offline_data.get_state(),
            "best_evaluation": self._best_evaluation,
            "latest_evaluation": self._latest_evaluation,
            "score_history": [[asdict(score) for score in ev] for ev in self._score_history],
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
        }
        return state

    @override(Algorithm)
    def set_state(self, state: StateDict) -> None:
        super().set_state(state)
        lamo_state = state.get("lamo")
        if lamo_state:
            self.offline_data.set_state(lamo_state["offline_data"])
            self._best_evaluation = lamo_state["best_evaluation"]
            self._latest_evaluation = lamo_state["latest_evaluation"]
            self._score_history = [
                [TargetScore(**score) for score in evaluation]
                for evaluation in lamo_state.get("score_history", [])
            ]
            random.setstate(lamo_state["rng"]["python"])
            np.random.set_state(lamo_state["rng"]["numpy"])
            torch.set_rng_state(lamo_state["rng"]["torch"])

    @override(Algorithm)
    def save_to_path(
        self,
        path: str | pathlib.Path | None = None,
        *,
        state: StateDict | None = None,
        filesystem: Any = None,
        use_msgpack: bool = False,
    ) -> str:
        """RLlib's checkpoint, written atomically where it goes to a local folder.

        Tune (and `algo.save()`) write here; a run killed mid-save leaves the previous
        checkpoint intact instead of half a new one (see `write_folder_atomically`).
        """
        save = super().save_to_path
        if path is None or filesystem is not None or is_uri(str(path)):
            return save(path, state=state, filesystem=filesystem, use_msgpack=use_msgpack)
        write_folder_atomically(
            path, lambda staging: save(staging, state=state, use_msgpack=use_msgpack)
        )
        return str(path)

    @classmethod
    @override(Algorithm)
    def from_checkpoint(cls, path: str | pathlib.Path, *args: Any, **kwargs: Any) -> LaMo:
        check_checkpoint_folder(path)
        return super().from_checkpoint(path, *args, **kwargs)

    @override(Algorithm)
    def restore_from_path(self, path: str | pathlib.Path, *args: Any, **kwargs: Any) -> None:
        """Restores without Ray 2.60's training-env-runner sync, which offline runs lack."""
        path = pathlib.Path(path)
        check_checkpoint_folder(path)
        try:
            restore_offline(self, path, *args, **kwargs)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
            raise ValueError(
                f"{path}: the checkpoint is corrupt or incomplete and cannot be restored "
                f"({type(error).__name__}: {error})"
            ) from error


def local_learner_cpus(other_bundles: list[dict[str, float]]) -> int:
    """CPUs for a local learner: this node's cores, capped so that all bundles fit the cluster."""
    cores = os.cpu_count() or 1
    if not ray.is_initialized():
        return cores
    cluster_cpus = ray.cluster_resources().get("CPU", cores)
    spare = int(cluster_cpus - sum(bundle.get("CPU", 0) for bundle in other_bundles))
    return max(1, min(cores, spare))


def _learner_major_concat(batches: list[Any], num_learners: int) -> Any:
    """Concatenates per-step batches so learner i's rows of every step lie in its shard."""
    from ray.rllib.policy.sample_batch import MultiAgentBatch, concat_samples

    if num_learners == 1:
        return concat_samples(batches)
    pieces = []
    for learner in range(num_learners):
        for batch in batches:
            size = batch.env_steps() // num_learners
            start = learner * size
            pieces.append(
                MultiAgentBatch(
                    {mid: b[start : start + size] for mid, b in batch.policy_batches.items()},
                    env_steps=size,
                )
            )
    return concat_samples(pieces)


# `tune.Tuner("LaMo", ...)` and `run: LaMo` in experiment files find the algorithm by name.
tune.register_trainable("LaMo", LaMo)

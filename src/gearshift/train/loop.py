"""The one training loop of gearshift, built on Hugging Face Accelerate.

Run a script that uses :class:`Trainer` with ``python`` for one device, or with
``accelerate launch`` for many GPUs/machines; the loop is the same.

Determinism and resume
----------------------
* The data order depends only on ``(seed, epoch)``: a dataset is read through
  :class:`EpochSampler`, which shuffles with a fresh ``torch.Generator`` seeded from both;
  the DataLoader has its own generator (re-seeded per epoch), so loading never draws from
  the global RNG. A DataLoader passed in is used as given (its ``RandomSampler`` is made
  seedable by Accelerate with ``data_seed=seed``).
* A checkpoint records the epoch and how many batches of it were consumed; resuming skips
  exactly those batches (``accelerate.skip_first_batches``) and restores every RNG (torch
  CPU/CUDA, python, numpy) right after the first batch of the resumed run is fetched.
* Evaluation runs with the RNGs saved and restored, so evaluating (or not) never changes
  the training trajectory.
* Ctrl-C (SIGINT) is deferred: the current step finishes, a checkpoint is written, then
  ``KeyboardInterrupt`` is raised. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler

from gearshift.atomic import atomic_directory, replace_directory, write_text_atomic
from gearshift.constants import OPTIMIZER_NAME, TRAINER_STATE_NAME, WEIGHTS_NAME
from gearshift.errors import ArtifactError, ConfigError, DataError

from . import checkpoint as ckpt
from .config import TrainConfig, result_differences

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, Any], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]
EvalFn = Callable[[torch.nn.Module], Mapping[str, float]]
SaveModelFn = Callable[[torch.nn.Module, Path], None]


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    """A 63-bit seed that depends on (seed, epoch, salt) only."""
    x = (
        int(seed) * 0x9E3779B97F4A7C15 + int(epoch) * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB
    ) & (2**64 - 1)
    x ^= x >> 31
    return x & (2**63 - 1)


class EpochSampler(Sampler[int]):
    """Indices ``0..n-1``, shuffled by a generator seeded from ``(seed, epoch)`` only.

    With ``lengths`` and ``batch_size`` (length grouping), the shuffled indices are cut into
    chunks of ``chunk_batches`` batches, each chunk is sorted by length (so a batch pads to
    little more than its own examples), and the order of the batches is shuffled again.
    """

    def __init__(
        self,
        length: int,
        seed: int,
        shuffle: bool = True,
        lengths: Sequence[int] | None = None,
        batch_size: int | None = None,
        chunk_batches: int = 50,
    ):
        self.length = int(length)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.lengths = list(lengths) if lengths is not None else None
        self.batch_size = batch_size
        self.chunk_batches = chunk_batches
        if self.lengths is not None and (batch_size is None or len(self.lengths) != self.length):
            raise ConfigError("length grouping needs one length per example and a batch_size")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.length))
        g = torch.Generator()
        g.manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.length, generator=g).tolist()
        if self.lengths is None:
            return iter(order)
        chunk = self.batch_size * self.chunk_batches
        grouped: list[int] = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            grouped.extend(sorted(part, key=lambda i: -self.lengths[i]))
        batches = [
            grouped[i : i + self.batch_size] for i in range(0, len(grouped), self.batch_size)
        ]
        perm = torch.randperm(len(batches), generator=g).tolist()
        return iter([i for b in perm for i in batches[b]])


class Callback:
    """Hooks into :class:`Trainer`; override what you need (all are no-ops here).

    Any object with some of these methods works as a callback too. A callback stops
    training with ``trainer.should_stop = True``; one that changes the model's parameters
    calls ``trainer.reset_optimizer()`` afterwards. ``state_dict``/``load_state_dict``
    (JSON-compatible) travel in the checkpoint, so the callback resumes where it was.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first step (also when resuming), right after ``model.train()``.

        Put parts of the model that must stay in eval mode (a frozen base) in eval here;
        evaluation restores every submodule's mode exactly.
        """

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        """Gradients are complete (and synced), the optimizer has not stepped yet."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """After optimizer step ``step`` (1-based) and its log line, before that step's
        evaluation and checkpoint (so changes made here are evaluated and saved)."""

    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After each evaluation (best-model bookkeeping is done already)."""

    def on_save_checkpoint(self, trainer: Trainer, directory: Path) -> None:
        """While a checkpoint is written (main process): add files to ``directory``."""

    def on_load_checkpoint(self, trainer: Trainer, directory: Path) -> None:
        """On resume, before any weights are loaded (e.g. to re-apply a pruned structure)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last step, the final evaluation and the final checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when the metric has not improved for ``patience`` evaluations in a row."""

    def __init__(
        self,
        patience: int,
        metric: str | None = None,
        greater_is_better: bool | None = None,
        min_delta: float = 0.0,
    ):
        if patience < 1:
            raise ConfigError(f"EarlyStopping patience must be >= 1, got {patience}")
        self.patience = patience
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad_evals = 0

    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        name = self.metric or trainer.config.metric_for_best
        if not name or name not in metrics:
            raise ConfigError(f"EarlyStopping needs metric {name!r} in the eval metrics")
        gib = (
            self.greater_is_better
            if self.greater_is_better is not None
            else trainer.config.greater_is_better
        )
        v = metrics[name]
        better = self.best is None or (
            v > self.best + self.min_delta if gib else v < self.best - self.min_delta
        )
        if better and not math.isnan(v):
            self.best, self.bad_evals = v, 0
        else:
            self.bad_evals += 1
            if self.bad_evals >= self.patience:
                trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.bad_evals = int(state.get("bad_evals", 0))


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    global_step: int
    best_metric: float | None
    best_step: int | None
    final_metrics: dict[str, float]
    history: list[dict[str, Any]]
    best_model_dir: str | None = None
    stopped_early: bool = False


def _default_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    if not isinstance(batch, Mapping):
        raise ConfigError(
            "the default loss calls model(**batch) and needs dict batches; "
            f"got a {type(batch).__name__}: pass loss_fn to the Trainer"
        )
    out = model(**batch)
    loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
    if loss is None:
        raise ConfigError(
            "the model returned no loss: put labels in the batch or pass loss_fn to the Trainer"
        )
    return loss


class Trainer:
    """Train any ``torch.nn.Module`` with AdamW, a schedule, clipping and accumulation.

    Args:
        model: the module to train (the plain module; it is wrapped for multi-GPU runs).
        train_data: a ``DataLoader``, or a dataset (map-style: indexable with ``len``, e.g.
            a list of dicts or a ``TensorDataset``; or an ``IterableDataset``) batched with
            ``config.batch_size`` and ``collate_fn``.
        config: :class:`TrainConfig` (or a dict for :meth:`TrainConfig.from_dict`).
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``-> (loss, {name: float})`` (the
            dict is averaged and logged). Default: ``model(**batch).loss``. Under
            multi-GPU the model passed is the wrapped one: call it, don't reach inside.
        eval_fn: ``eval_fn(model) -> {name: float}`` on the plain model, in eval mode,
            under ``torch.no_grad``, on every process (process 0's result is used).
        callbacks: :class:`Callback` objects.
        trainable_params: the parameters to optimize (an iterable, or a callable
            ``model -> iterable``); default: the model's parameters with requires_grad.
            Parameters outside the model are allowed and are checkpointed too. An item
            may also be a group ``{"params": [...], "lr": x}``: those parameters use the
            learning rate x (the schedule scales every group alike).
        save_model_fn: ``save_model_fn(model, folder)`` writes the best model; default:
            ``model.save_pretrained(folder)`` or ``folder/model.safetensors``.
        collate_fn: batches dataset items (default: torch's ``default_collate``).
        accelerator: an ``accelerate.Accelerator`` to use instead of a new one.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_data: Any,
        config: TrainConfig | Mapping[str, Any],
        loss_fn: LossFn | None = None,
        eval_fn: EvalFn | None = None,
        callbacks: Iterable[Any] = (),
        trainable_params: Iterable[torch.Tensor] | Callable[[torch.nn.Module], Any] | None = None,
        save_model_fn: SaveModelFn | None = None,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        accelerator: Any = None,
    ):
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration

        if isinstance(config, Mapping):
            config = TrainConfig.from_dict(dict(config))
        if not isinstance(config, TrainConfig):
            raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
        config.validate()
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if config.metric_for_best and eval_fn is None:
            raise ConfigError(
                f"metric_for_best={config.metric_for_best!r} needs an eval_fn to compute it"
            )
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.loss_fn = loss_fn or _default_loss
        self.eval_fn = eval_fn
        self.callbacks = list(callbacks)
        self.save_model_fn = save_model_fn or ckpt.default_save_model

        if accelerator is None:
            accelerator = Accelerator(
                mixed_precision=config.mixed_precision,
                gradient_accumulation_steps=config.grad_accum_steps,
                dataloader_config=DataLoaderConfiguration(
                    use_seedable_sampler=True, data_seed=config.seed
                ),
            )
        elif accelerator.gradient_accumulation_steps != config.grad_accum_steps:
            raise ConfigError(
                f"the accelerator accumulates {accelerator.gradient_accumulation_steps} "
                f"batches but grad_accum_steps={config.grad_accum_steps}; make them equal"
            )
        self.accelerator = accelerator

        # Model and parameters.
        self.model = model  # the plain module (eval, saving, callbacks)
        if trainable_params is not None and not callable(trainable_params):
            trainable_params = list(trainable_params)
        self._params_spec = trainable_params
        self.wrapped_model = accelerator.prepare_model(model)
        self._params: list[torch.Tensor] = []
        self._extra_params: list[torch.Tensor] = []

        # Data.
        self._sampler: EpochSampler | None = None
        self._data_generator = torch.Generator()
        self.train_loader = accelerator.prepare_data_loader(
            self._build_loader(train_data, collate_fn)
        )
        try:
            self.batches_per_epoch: int | None = len(self.train_loader)
        except TypeError:
            self.batches_per_epoch = None
        if self.batches_per_epoch == 0:
            raise DataError("the training data is empty: it yields no batches")
        if config.max_steps > 0:
            self.total_steps = config.max_steps
        elif self.batches_per_epoch is None:
            raise ConfigError(
                "the training data has no length (an iterable dataset): set max_steps "
                "instead of epochs"
            )
        else:
            self.total_steps = max(1, math.ceil(config.epochs * self.steps_per_epoch))
        self.warmup_steps = math.ceil(config.warmup_ratio * self.total_steps)

        self.optimizer: Any = None
        self.scheduler: Any = None
        self._build_optimizer(self._collect_params(self._params_spec), scheduler_state=None)

        # Progress.
        self.global_step = 0
        self.epoch = 0
        self.step_in_epoch = 0  # batches of the current epoch consumed at the last step
        self.should_stop = False
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.last_metrics: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self._last_eval_step: int | None = None
        self._last_save_step: int | None = None
        self._saved_state_key: tuple | None = None
        self._pending_rng: tuple | None = None
        self._interrupt_requested = False
        self._fitted = False
        self._log_file = None
        self._progress = None
        self._last_grad_norm: float | None = None
        self._reset_log_accumulator()

    # ------------------------------------------------------------------ properties
    @property
    def steps_per_epoch(self) -> int | None:
        """Optimizer steps per epoch (the last, partial accumulation group counts)."""
        if self.batches_per_epoch is None:
            return None
        return math.ceil(self.batches_per_epoch / self.config.grad_accum_steps)

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def trainable_parameters(self) -> list[torch.Tensor]:
        return list(self._params)

    # ------------------------------------------------------------------ building
    def _build_loader(self, data: Any, collate_fn: Callable | None) -> DataLoader:
        cfg = self.config
        if isinstance(data, DataLoader):
            if collate_fn is not None:
                raise ConfigError("collate_fn is for datasets; a DataLoader brings its own")
            if data.batch_size is not None and data.batch_size != cfg.batch_size:
                logger.warning(
                    "the DataLoader's batch_size %s differs from config.batch_size %s; "
                    "the DataLoader's is used",
                    data.batch_size,
                    cfg.batch_size,
                )
            return data
        common = dict(
            batch_size=cfg.batch_size,
            collate_fn=collate_fn,
            num_workers=cfg.num_workers,
            generator=self._data_generator,
        )
        if isinstance(data, IterableDataset):
            return DataLoader(data, **common)
        if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
            raise ConfigError(
                f"train data must be a DataLoader or a dataset, got {type(data).__name__}"
            )
        if len(data) == 0:
            raise DataError("the training dataset is empty")
        lengths = None
        if cfg.group_by_length:
            try:
                lengths = [len(item["input_ids"]) for item in data]
            except (TypeError, KeyError, IndexError) as exc:
                raise ConfigError(
                    "group_by_length needs dataset items with 'input_ids'; turn it off for this data"
                ) from exc
        self._sampler = EpochSampler(
            len(data), cfg.seed, shuffle=cfg.shuffle, lengths=lengths, batch_size=cfg.batch_size
        )
        return DataLoader(data, sampler=self._sampler, **common)

    def _collect_params(self, spec: Any) -> list[torch.Tensor]:
        if spec is None:
            params = [p for p in self.model.parameters() if p.requires_grad]
        elif callable(spec):
            params = list(spec(self.model))
        else:
            params = list(spec)
        self._param_lr: dict[int, float] = {}
        flat = []
        for item in params:
            if isinstance(item, Mapping):
                if "params" not in item:
                    raise ConfigError("a parameter group needs a 'params' list (and may set 'lr')")
                group = list(item["params"])
                if "lr" in item:
                    self._param_lr.update({id(p): float(item["lr"]) for p in group})
                flat += group
            else:
                flat.append(item)
        params = flat
        seen: set[int] = set()
        out = []
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise ConfigError(f"trainable parameter #{i} is a {type(p).__name__}, not a tensor")
            if not p.requires_grad:
                raise ConfigError(
                    f"trainable parameter #{i} (shape {tuple(p.shape)}) has requires_grad=False"
                )
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        if not out:
            raise ConfigError("nothing to train: no parameter requires grad")
        return out

    def _build_optimizer(self, params: list[torch.Tensor], scheduler_state: dict | None) -> None:
        from transformers import get_scheduler

        cfg = self.config
        self._params = params
        in_model = {id(p) for p in self.model.parameters()}
        self._extra_params = [p for p in params if id(p) not in in_model]
        # Biases and norm weights (ndim < 2) get no weight decay. Both groups always exist
        # (possibly empty) so optimizer and scheduler states keep their layout.
        lr_of = getattr(self, "_param_lr", {})
        rates = sorted({lr_of.get(id(p), cfg.learning_rate) for p in params})
        groups = []
        for lr in rates:  # one pair of groups per learning rate, in a fixed order
            mine = [p for p in params if lr_of.get(id(p), cfg.learning_rate) == lr]
            groups += [
                {
                    "params": [p for p in mine if p.ndim >= 2],
                    "weight_decay": cfg.weight_decay,
                    "lr": lr,
                },
                {"params": [p for p in mine if p.ndim < 2], "weight_decay": 0.0, "lr": lr},
            ]
        raw = torch.optim.AdamW(groups, lr=cfg.learning_rate)
        name = {"constant": "constant_with_warmup"}.get(cfg.lr_schedule, cfg.lr_schedule)
        scheduler = get_scheduler(
            name,
            raw,
            num_warmup_steps=self.warmup_steps,
            num_training_steps=self.total_steps,
        )
        if scheduler_state is not None:
            scheduler.load_state_dict(scheduler_state)
            for group, lr in zip(raw.param_groups, scheduler.get_last_lr()):
                group["lr"] = lr
        self.optimizer = self.accelerator.prepare_optimizer(raw)
        self.scheduler = scheduler

    def reset_optimizer(self, params: Iterable[torch.Tensor] | None = None) -> None:
        """Rebuild AdamW (fresh moments) after the model's parameters changed.

        ``params``: the new parameters to train; default: re-collect them as at
        construction (call ``trainable_params`` again if it was a callable, else the
        requires_grad parameters; a fixed list given then is reused). The learning-rate
        schedule continues from the current step. Pending gradients are dropped.
        """
        old = self.optimizer
        sched_state = self.scheduler.state_dict() if self.scheduler is not None else None
        opts = getattr(self.accelerator, "_optimizers", None)
        if isinstance(opts, list) and old in opts:
            opts.remove(old)
        for p in self._params:
            p.grad = None
        spec = self._params_spec if params is None else list(params)
        self._build_optimizer(self._collect_params(spec), scheduler_state=sched_state)

    # ------------------------------------------------------------------ fit
    def fit(self, resume: bool = False, resume_from: str | Path | None = None) -> TrainResult:
        """Train to the end; ``resume``/``resume_from`` continue from a checkpoint.

        ``resume=True`` uses ``<output_dir>/checkpoint`` and starts fresh (with an info
        log) when there is none; ``resume_from`` names a checkpoint folder that must exist.
        """
        if self._fitted:
            raise RuntimeError("Trainer.fit can run once; make a new Trainer to train again")
        self._fitted = True
        acc = self.accelerator
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self._locate_checkpoint(resume, resume_from)
        if path is not None:
            self._load_checkpoint(path)
        else:
            self._start_fresh(warn_existing=not resume and resume_from is None)
        self._open_log()
        self.model.train()
        self._call("on_train_begin")
        previous_handler = self._install_sigint()
        self._open_progress()
        try:
            self._train_loop()
            self._flush_train_log()
            if self.eval_fn is not None and self._last_eval_step != self.global_step:
                self.evaluate()
            if self._state_key() != self._saved_state_key:
                self.save_checkpoint()
        except KeyboardInterrupt:
            last = self._last_save_step
            logger.warning(
                "training interrupted at step %d; the checkpoint in %s is at step %s "
                "(continue with resume=True)",
                self.global_step,
                self.output_dir / ckpt.CHECKPOINT_DIR,
                last if last is not None else "none",
            )
            raise
        finally:
            self._restore_sigint(previous_handler)
            if self._progress is not None:
                self._progress.close()
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
        self._call("on_train_end")
        if self.is_main_process and not self.config.keep_optimizer:
            self._drop_optimizer_state()
        best_dir = self.output_dir / ckpt.BEST_DIR
        return TrainResult(
            global_step=self.global_step,
            best_metric=self.best_metric,
            best_step=self.best_step,
            final_metrics=dict(self.last_metrics),
            history=list(self.history),
            best_model_dir=str(best_dir)
            if self.config.keep_best and self.best_step is not None and best_dir.is_dir()
            else None,
            stopped_early=self.should_stop and self.global_step < self.total_steps,
        )

    def _train_loop(self) -> None:
        acc = self.accelerator
        while self.global_step < self.total_steps and not self.should_stop:
            loader = self._epoch_loader()
            epoch_at_start = self.epoch
            got_batch = False
            it = iter(loader)
            try:
                for batch in it:
                    got_batch = True
                    if self._pending_rng is not None:
                        self._restore_pending_rng()
                    self.step_in_epoch += 1
                    if self._train_batch(batch):
                        self.global_step += 1
                        epoch_done = bool(acc.gradient_state.end_of_dataloader)
                        self._after_step(epoch_done)
                        if self.global_step >= self.total_steps or self.should_stop:
                            break
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
                end = getattr(loader, "end", None)
                if end is not None:
                    end()
            if self._pending_rng is not None:
                self._restore_pending_rng()
            if self.epoch == epoch_at_start and self.global_step < self.total_steps:
                if not self.should_stop:
                    if not got_batch and self.step_in_epoch == 0:
                        raise DataError("the training data yields no batches")
                    # The loader ended without flagging its last batch: close the epoch.
                    self.epoch += 1
                    self.step_in_epoch = 0

    def _epoch_loader(self):
        from accelerate import skip_first_batches

        if self._sampler is not None:
            self._sampler.set_epoch(self.epoch)
        self._data_generator.manual_seed(epoch_seed(self.config.seed, self.epoch, salt=1))
        loader = self.train_loader
        if self.step_in_epoch > 0:
            loader = skip_first_batches(loader, self.step_in_epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.epoch)
        return loader

    def _train_batch(self, batch: Any) -> bool:
        acc = self.accelerator
        cfg = self.config
        with acc.accumulate(self.wrapped_model):
            loss, extras = self._compute_loss(batch)
            acc.backward(loss)
            synced = acc.sync_gradients
            if synced:
                self._call("on_before_optimizer_step")
                if cfg.max_grad_norm > 0:
                    self._last_grad_norm = acc.clip_grad_norm_(self._params, cfg.max_grad_norm)
                self.optimizer.step()
                if not acc.optimizer_step_was_skipped:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        self._accumulate_log(loss, extras)
        return synced

    def _compute_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        out = self.loss_fn(self.wrapped_model, batch)
        extras: dict[str, Any] = {}
        if isinstance(out, tuple):
            if len(out) != 2 or not isinstance(out[1], Mapping):
                raise ConfigError("loss_fn must return a loss tensor or (loss, dict of floats)")
            out, extras = out[0], dict(out[1])
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            raise ConfigError(
                f"loss_fn must return a scalar tensor, got {type(out).__name__}"
                + (f" of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else "")
            )
        return out.reshape(()), extras

    def _after_step(self, epoch_done: bool) -> None:
        cfg = self.config
        step = self.global_step
        if epoch_done:
            self.epoch += 1
            self.step_in_epoch = 0
        if step % cfg.log_every == 0:
            self._flush_train_log()
        self._call("on_step_end", step)
        if self.eval_fn is not None and (
            (cfg.eval_every > 0 and step % cfg.eval_every == 0)
            or (cfg.eval_every == 0 and epoch_done)
        ):
            self.evaluate()
        final = step >= self.total_steps or self.should_stop
        if not final and ((cfg.save_every > 0 and step % cfg.save_every == 0) or epoch_done):
            self.save_checkpoint()
        if self._progress is not None:
            self._progress.update(1)
        self._check_interrupt()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Run ``eval_fn`` now; log the metrics and keep the best model."""
        if self.eval_fn is None:
            return {}
        cfg = self.config
        model = self.model
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with ckpt.isolated_rng(), torch.no_grad():
                raw = self.eval_fn(model)
        finally:
            for m, training in modes:  # restore exactly (a frozen part may stay in eval)
                m.training = training
        if not isinstance(raw, Mapping):
            raise ConfigError(f"eval_fn must return a dict of floats, got {type(raw).__name__}")
        metrics = {str(k): float(v) for k, v in raw.items()}
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [metrics]
            broadcast_object_list(box, from_process=0)
            metrics = box[0]
        self.last_metrics = metrics
        self._last_eval_step = self.global_step
        self._record(
            {"kind": "eval", "step": self.global_step, "epoch": self._epoch_float(), **metrics}
        )
        if cfg.metric_for_best:
            if cfg.metric_for_best not in metrics:
                raise ConfigError(
                    f"metric_for_best={cfg.metric_for_best!r} is not among the eval metrics "
                    f"({', '.join(sorted(metrics)) or 'none'})"
                )
            value = metrics[cfg.metric_for_best]
            if not math.isnan(value) and (
                self.best_metric is None
                or (value > self.best_metric if cfg.greater_is_better else value < self.best_metric)
            ):
                self.best_metric, self.best_step = value, self.global_step
                if cfg.keep_best:
                    self.save_model(self.output_dir / ckpt.BEST_DIR)
        self._call("on_eval", metrics)
        return metrics

    def save_model(self, path: str | Path) -> None:
        """Write the plain model with ``save_model_fn`` to ``path`` atomically (main process)."""
        if self.is_main_process:
            with atomic_directory(path) as tmp:
                self.save_model_fn(self.model, tmp)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ logging
    def _reset_log_accumulator(self) -> None:
        self._loss_sum: Any = 0.0
        self._loss_count = 0
        self._extra_sums: dict[str, Any] = {}

    def _accumulate_log(self, loss: torch.Tensor, extras: dict[str, Any]) -> None:
        self._loss_sum = self._loss_sum + loss.detach().float()
        self._loss_count += 1
        for k, v in extras.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            self._extra_sums[k] = self._extra_sums.get(k, 0.0) + v

    def _flush_train_log(self) -> None:
        if self._loss_count == 0:
            return
        keys = sorted(self._extra_sums)
        device = self.accelerator.device
        vals = torch.stack(
            [
                torch.as_tensor(x, dtype=torch.float32, device=device).reshape(())
                for x in [self._loss_sum, float(self._loss_count)]
                + [self._extra_sums[k] for k in keys]
            ]
        )
        if self.accelerator.num_processes > 1:
            vals = self.accelerator.reduce(vals, reduction="sum")
        vals = vals.tolist()
        count = vals[1]
        record: dict[str, Any] = {
            "kind": "train",
            "step": self.global_step,
            "epoch": self._epoch_float(),
            "loss": vals[0] / count,
            "lr": float(self.scheduler.get_last_lr()[0]),
        }
        if self._last_grad_norm is not None:
            record["grad_norm"] = float(self._last_grad_norm)
        for k, v in zip(keys, vals[2:]):
            record[k] = v / count
        self._reset_log_accumulator()
        self._record(record)
        if self._progress is not None:
            self._progress.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)

    def log(self, values: Mapping[str, Any]) -> None:
        """Add a record (e.g. a callback's measurements) to the history and log.jsonl."""
        self._record({"kind": "custom", "step": self.global_step, **dict(values)})

    def _record(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self._log_file is not None:
            self._log_file.write(json.dumps(record) + "\n")
            self._log_file.flush()

    def _epoch_float(self) -> float:
        if not self.batches_per_epoch:
            return float(self.epoch)
        return round(self.epoch + self.step_in_epoch / self.batches_per_epoch, 6)

    def _open_log(self) -> None:
        """(Re)write log.jsonl from the history, then append to it."""
        if not self.is_main_process:
            return
        path = self.output_dir / ckpt.LOG_NAME
        write_text_atomic(path, "".join(json.dumps(rec) + "\n" for rec in self.history))
        self._log_file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def _open_progress(self) -> None:
        from tqdm.auto import tqdm

        self._progress = tqdm(
            total=self.total_steps,
            initial=self.global_step,
            desc="train",
            disable=not (self.config.progress and self.is_main_process),
            dynamic_ncols=True,
        )

    # ------------------------------------------------------------------ callbacks
    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)

    # ------------------------------------------------------------------ interrupts
    def _install_sigint(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN:
            return None
        self._interrupt_requested = False

        def handler(signum, frame):  # noqa: ARG001
            if self._interrupt_requested:
                self._restore_sigint(previous)
                raise KeyboardInterrupt
            self._interrupt_requested = True
            logger.warning(
                "interrupt received: finishing this step and saving a checkpoint "
                "(press Ctrl-C again to stop at once)"
            )

        signal.signal(signal.SIGINT, handler)
        return ("installed", previous)

    @staticmethod
    def _restore_sigint(token: Any) -> None:
        if not token:
            return
        previous = token[1]
        if previous is None:
            previous = signal.default_int_handler
        try:
            signal.signal(signal.SIGINT, previous)
        except (ValueError, TypeError):  # pragma: no cover - odd handlers / threads
            pass

    def _check_interrupt(self) -> None:
        acc = self.accelerator
        if acc.num_processes > 1:
            if self._interrupt_requested:
                acc.set_trigger()
            stop = acc.check_trigger()
        else:
            stop = self._interrupt_requested
        if not stop:
            return
        if self._state_key() != self._saved_state_key:
            self.save_checkpoint()
        logger.warning("stopped by interrupt after step %d; checkpoint saved", self.global_step)
        raise KeyboardInterrupt

    # ------------------------------------------------------------------ checkpoints
    def _state_key(self) -> tuple:
        return (self.global_step, self.epoch, self.step_in_epoch, len(self.history))

    def _trainer_state(self) -> dict[str, Any]:
        def plain(x: Any) -> Any:
            return float(x) if isinstance(x, torch.Tensor) else x

        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "total_steps": self.total_steps,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "last_eval_step": self._last_eval_step,
            "last_metrics": self.last_metrics,
            "should_stop": self.should_stop,
            "num_processes": self.accelerator.num_processes,
            "extra_params": len(self._extra_params),
            "log_accumulator": {
                "loss_sum": plain(self._loss_sum),
                "count": self._loss_count,
                "extras": {k: plain(v) for k, v in self._extra_sums.items()},
            },
            "callbacks": [
                {"class": type(cb).__name__, "state": cb.state_dict()}
                if hasattr(cb, "state_dict")
                else {"class": type(cb).__name__, "state": None}
                for cb in self.callbacks
            ],
            "config": self.config.to_dict(),
            "history": self.history,
        }

    def save_checkpoint(self) -> Path:
        """Write ``<output_dir>/checkpoint/`` atomically (replacing the previous one)."""
        acc = self.accelerator
        final = self.output_dir / ckpt.CHECKPOINT_DIR
        tmp = self.output_dir / f".{ckpt.CHECKPOINT_DIR}.tmp-step{self.global_step}"
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            ckpt.save_rng_state(
                tmp / ckpt.rng_file_name(acc.process_index),
                all_cuda_devices=acc.num_processes == 1,
            )
            acc.wait_for_everyone()
            if acc.is_main_process:
                ckpt.save_model_weights(self.model, tmp / WEIGHTS_NAME)
                if self._extra_params:
                    ckpt.save_params(self._extra_params, tmp / ckpt.EXTRA_PARAMS_NAME)
                scaler = getattr(acc, "scaler", None)
                ckpt.save_optimizer(
                    tmp / OPTIMIZER_NAME,
                    {
                        "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else None,
                    },
                )
                self._call("on_save_checkpoint", tmp)
                ckpt.write_trainer_state(tmp, self._trainer_state())  # last: marks complete
                replace_directory(tmp, final)
        except BaseException:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        acc.wait_for_everyone()
        self._last_save_step = self.global_step
        self._saved_state_key = self._state_key()
        return final

    def _drop_optimizer_state(self) -> None:
        """Delete the finished run's optimizer state (``config.keep_optimizer`` keeps it) and
        record that in trainer_state.json, so a later resume knows there is nothing left to
        train rather than a damaged checkpoint."""
        final = self.output_dir / ckpt.CHECKPOINT_DIR
        opt_file = final / OPTIMIZER_NAME
        if not ckpt.is_complete(final) or not opt_file.is_file():
            return
        state = ckpt.read_trainer_state(final)
        state["optimizer_dropped"] = True
        ckpt.write_trainer_state(
            final, {k: v for k, v in state.items() if not k.startswith("format")}
        )
        size = opt_file.stat().st_size
        opt_file.unlink()
        logger.info(
            "training finished: deleted the optimizer state (%.0f MB) from %s; the model and "
            "trainer state stay there (keep_optimizer=True keeps it)",
            size / 1e6,
            final,
        )

    def _locate_checkpoint(self, resume: bool, resume_from: str | Path | None) -> Path | None:
        acc = self.accelerator
        if resume_from is not None:
            path = Path(resume_from)
            if not ckpt.is_complete(path):
                raise ArtifactError(
                    f"cannot resume from {path}: it is not a complete gearshift checkpoint "
                    f"({TRAINER_STATE_NAME} is missing)"
                )
            return path
        if not resume:
            return None
        if acc.is_main_process:
            ckpt.find_checkpoint(self.output_dir)  # also recovers an interrupted save
        acc.wait_for_everyone()
        path = self.output_dir / ckpt.CHECKPOINT_DIR
        if not ckpt.is_complete(path):
            logger.info("no checkpoint in %s: starting a fresh run", self.output_dir)
            return None
        return path

    def _start_fresh(self, warn_existing: bool) -> None:
        from accelerate.utils import set_seed

        if self.is_main_process:
            if warn_existing and ckpt.is_complete(self.output_dir / ckpt.CHECKPOINT_DIR):
                logger.warning(
                    "%s holds a checkpoint of an earlier run; this fresh run replaces it at "
                    "its first save (pass resume=True to continue it instead)",
                    self.output_dir,
                )
            ckpt.clean_output_dir(self.output_dir)
        set_seed(self.config.seed)

    def _check_optimizer_state(self, path: Path) -> None:
        """The optimizer state is matched to parameters by position: a model whose parameters
        are registered in another order (code changed between save and resume) loads without
        complaint and fails, or silently mixes moments, at the next step. Compare shapes."""
        opt = getattr(self.optimizer, "optimizer", self.optimizer)
        names = {id(p): n for n, p in self.model.named_parameters()}
        for group in opt.param_groups:
            for p in group["params"]:
                for key, value in opt.state.get(p, {}).items():
                    if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                        raise ArtifactError(
                            f"the optimizer state in {path} does not fit this run's parameters: "
                            f"{names.get(id(p), 'a parameter')} has shape {tuple(p.shape)}, its "
                            f"saved {key!r} {tuple(value.shape)}. The model's parameters are "
                            "registered in another order or shape than when the checkpoint was "
                            "written; resume with the code that wrote it, or start a new run."
                        )

    def _load_checkpoint(self, path: Path) -> None:
        acc = self.accelerator
        state = ckpt.read_trainer_state(path)
        diffs = result_differences(state.get("config", {}), self.config)
        if diffs:
            desc = "; ".join(f"{n}: checkpoint {old!r}, now {new!r}" for n, old, new in diffs)
            raise ConfigError(
                f"cannot resume from {path}: settings that change the result differ ({desc}). "
                "Use the checkpoint's values, or a new output_dir for a new run."
            )
        if state.get("num_processes", 1) != acc.num_processes:
            raise ConfigError(
                f"cannot resume from {path}: it was written by {state.get('num_processes')} "
                f"processes, this run has {acc.num_processes}; launch with the same number"
            )
        if state.get("total_steps") not in (None, self.total_steps):
            raise ConfigError(
                f"cannot resume from {path}: it plans {state['total_steps']} steps, this run "
                f"{self.total_steps} (did the training data change?)"
            )
        self._call("on_load_checkpoint", path)
        if int(state.get("extra_params", 0)) != len(self._extra_params):
            raise ArtifactError(
                f"{path} has {state.get('extra_params')} trained parameters outside the model, "
                f"this run trains {len(self._extra_params)}"
            )
        ckpt.load_model_weights(self.model, path / WEIGHTS_NAME)
        ckpt.load_params(self._extra_params, path / ckpt.EXTRA_PARAMS_NAME)
        if state.get("optimizer_dropped") and not (path / OPTIMIZER_NAME).is_file():
            # a finished run whose optimizer state was deleted: nothing is left to train
            # (a run planning more steps was refused above by the total_steps check)
            logger.info("%s is a finished run (its optimizer state was deleted)", path)
        else:
            opt = ckpt.load_optimizer(path / OPTIMIZER_NAME)
            try:
                self.optimizer.load_state_dict(opt["optimizer"])
                self.scheduler.load_state_dict(opt["scheduler"])
                scaler = getattr(acc, "scaler", None)
                if scaler is not None and opt.get("scaler") is not None:
                    scaler.load_state_dict(opt["scaler"])
            except (KeyError, ValueError) as exc:
                raise ArtifactError(
                    f"the optimizer state in {path} does not fit this run's parameters: {exc}"
                ) from exc
        self._check_optimizer_state(path)
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.best_metric = state.get("best_metric")
        self.best_step = state.get("best_step")
        self._last_eval_step = state.get("last_eval_step")
        self.last_metrics = dict(state.get("last_metrics") or {})
        self.should_stop = bool(state.get("should_stop", False))
        self.history = list(state.get("history", []))
        accum = state.get("log_accumulator") or {}
        self._loss_sum = torch.tensor(
            float(accum.get("loss_sum", 0.0)), dtype=torch.float32, device=acc.device
        )
        self._loss_count = int(accum.get("count", 0))
        self._extra_sums = dict(accum.get("extras", {}))
        saved_cbs = state.get("callbacks", [])
        for cb, saved in zip(self.callbacks, saved_cbs):
            if hasattr(cb, "load_state_dict") and saved.get("state") is not None:
                cb.load_state_dict(saved["state"])
        self._pending_rng = ckpt.load_rng_state(path / ckpt.rng_file_name(acc.process_index))
        self._last_save_step = self.global_step
        self._saved_state_key = self._state_key()
        if self.is_main_process:
            ckpt.clean_output_dir(self.output_dir)
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            path,
            self.global_step,
            self.epoch,
            self.step_in_epoch,
        )

    def _restore_pending_rng(self) -> None:
        tensors, meta = self._pending_rng
        self._pending_rng = None
        ckpt.restore_rng_state(tensors, meta)

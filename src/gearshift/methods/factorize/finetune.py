"""The paper's protocol: compress the pre-trained model, then fine-tune it on the task.

Fine-tuning trains the compressed form itself (low-rank factors; or codes, row norms and
decoders, the weight being rebuilt in every training step), so the result stays as small
as the compression left it. It is :func:`gearshift.train.finetune.finetune` on the model object
(same Trainer, same dev-set model selection), saving factorized folders. The compressed
modules' parameters may take their own learning rate (``compressed_lr``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from gearshift.methods.factorize.model import (
    compressed_modules,
    load_factorized,
    save_factorized,
)
from gearshift.train import TrainConfig
from gearshift.train.finetune import FinetuneResult, finetune


def finetune_compressed(
    model: nn.Module,
    tokenizer: Any,
    task_name: str,
    output_dir: str | Path,
    train_config: TrainConfig | None = None,
    train_limit: int | None = None,
    dev_limit: int | None = None,
    max_length: int = 128,
    data_dir: str | None = None,
    resume: bool = False,
    compressed_lr: float | None = None,
) -> FinetuneResult:
    """Fine-tune a compressed ``model`` on ``task_name``; the best dev checkpoint is saved
    as a factorized gearshift folder at ``<output_dir>/best``. Returns its dev score.

    ``compressed_lr``: learning rate of the compressed form's parameters (factors, bases;
    codes, norms, decoders; shared ones once); the rest of the model, the compressed
    modules' exact biases included, keeps the config's."""
    fconfig = model.factorize_config

    def save(m: nn.Module, path: Path, tok: Any, meta: dict) -> None:
        save_factorized(m, path, fconfig, tokenizer=tok, extra=meta)

    return finetune(
        model,
        task_name,
        output_dir,
        train_config,
        train_limit,
        dev_limit,
        max_length,
        data_dir,
        resume,
        tokenizer=tokenizer,
        save_fn=save,
        load_fn=load_factorized,
        trainable_params=(
            (lambda m: compressed_lr_groups(m, compressed_lr))
            if compressed_lr is not None
            else None
        ),
    )


def compressed_lr_groups(model: nn.Module, lr: float) -> list[dict]:
    """The Trainer's parameter groups: the compressed form's parameters (factors, bases;
    codes, norms, decoders; a shared one once) at ``lr``, every other trainable parameter
    (the compressed modules' exact biases included) at the config's learning rate."""
    modules = compressed_modules(model).values()
    exact = {id(b) for c in modules if (b := getattr(c, "bias", None)) is not None}
    mine = {id(p): p for c in modules for p in c.parameters() if id(p) not in exact}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in mine]
    return [{"params": list(mine.values()), "lr": lr}, {"params": rest}]

"""Tests of gearshift.train: the loop, checkpoints and resume."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_file
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from gearshift.constants import OPTIMIZER_NAME, RNG_STATE_NAME, TRAINER_STATE_NAME, WEIGHTS_NAME
from gearshift.errors import ArtifactError, ConfigError
from gearshift.train import (
    Callback,
    EarlyStopping,
    EpochSampler,
    TrainConfig,
    Trainer,
    TrainResult,
    find_checkpoint,
)
from gearshift.train import checkpoint as ckpt

VOCAB = 20


@dataclass
class Out:
    loss: torch.Tensor | None
    logits: torch.Tensor


class TinyClassifier(nn.Module):
    """Mean of token embeddings -> dropout -> linear; class = which half of the vocab."""

    def __init__(self, dropout: float = 0.3):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(8, 2)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.drop(self.emb(input_ids).mean(1)))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return Out(loss, logits)


def make_data(n: int = 48, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        y = i % 2
        ids = torch.randint(0, VOCAB // 2, (6,), generator=g) + (VOCAB // 2) * y
        items.append({"input_ids": ids, "labels": torch.tensor(y)})
    return items


EVAL_DATA = make_data(32, seed=1)


def accuracy(model: nn.Module) -> dict[str, float]:
    ids = torch.stack([d["input_ids"] for d in EVAL_DATA])
    labels = torch.stack([d["labels"] for d in EVAL_DATA])
    out = model(input_ids=ids, labels=labels)
    return {
        "accuracy": (out.logits.argmax(-1) == labels).float().mean().item(),
        "loss": out.loss.item(),
    }


# 48 examples / batch 8 = 6 batches per epoch; accumulation 2 -> 3 steps per epoch; 12 steps.
BASE = dict(
    learning_rate=0.05,
    epochs=4,
    batch_size=8,
    grad_accum_steps=2,
    warmup_ratio=0.2,
    lr_schedule="linear",
    save_every=4,
    eval_every=5,
    log_every=1,
    metric_for_best="accuracy",
    progress=False,
    seed=7,
)


class IterableData(IterableDataset):
    def __iter__(self):
        return iter(make_data())


def make_train_data(kind: str, batch_size: int):
    if kind == "dataset":
        return make_data()
    if kind == "dataloader":  # a user's loader with shuffle=True (made seedable by Accelerate)
        return DataLoader(make_data(), batch_size=batch_size, shuffle=True)
    return IterableData()


def make_trainer(
    out_dir, model_seed: int = 0, callbacks=(), data: str = "dataset", **overrides
) -> Trainer:
    torch.manual_seed(model_seed)
    model = TinyClassifier()
    kw = {**BASE, **overrides}
    eval_fn = kw.pop("eval_fn", accuracy)
    if eval_fn is None:
        kw["metric_for_best"] = None
    loss_fn = kw.pop("loss_fn", None)
    trainable = kw.pop("trainable_params", None)
    cfg = TrainConfig(output_dir=str(out_dir), **kw)
    return Trainer(
        model,
        make_train_data(data, cfg.batch_size),
        cfg,
        loss_fn=loss_fn,
        eval_fn=eval_fn,
        callbacks=callbacks,
        trainable_params=trainable,
    )


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), k


def train_losses(history: list[dict]) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history if h["kind"] == "train"}


class StopAt(Callback):
    """Simulates a crash: raises KeyboardInterrupt from inside step `step`'s callbacks."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, step):
        if step == self.step:
            raise KeyboardInterrupt


class Record(Callback):
    def __init__(self):
        self.steps: list[int] = []
        self.evals: list[tuple[int, dict]] = []

    def on_step_end(self, trainer, step):
        self.steps.append(step)

    def on_eval(self, trainer, metrics):
        self.evals.append((trainer.global_step, dict(metrics)))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: threads only add contention (and the fork test wants one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(one_thread, tmp_path_factory):
    """One uninterrupted run of the BASE setup."""
    out = tmp_path_factory.mktemp("reference")
    trainer = make_trainer(out)
    result = trainer.fit()
    return {"weights": weights(trainer.model), "result": result, "trainer": trainer}


# ------------------------------------------------------------------------------ basics
def test_loss_decreases_and_model_learns(tmp_path):
    trainer = make_trainer(tmp_path, epochs=6, eval_fn=None, grad_accum_steps=1)
    before = accuracy(trainer.model)["accuracy"]
    result = trainer.fit()
    assert isinstance(result, TrainResult)
    assert result.global_step == 36 == trainer.total_steps
    losses = list(train_losses(result.history).values())
    assert len(losses) == 36
    assert sum(losses[-6:]) / 6 < 0.5 * sum(losses[:6]) / 6
    trainer.model.eval()
    with torch.no_grad():
        after = accuracy(trainer.model)["accuracy"]
    assert before < 0.8 and after >= 0.95
    # log.jsonl mirrors the history.
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == result.history
    rec = result.history[0]
    assert {"step", "epoch", "loss", "lr", "kind"} <= rec.keys()


def test_eval_called_at_the_right_steps_in_eval_mode(tmp_path):
    seen = []

    def eval_fn(model):
        seen.append((model.training, torch.is_grad_enabled()))
        return {"accuracy": 0.5}

    rec = Record()
    make_trainer(tmp_path / "a", eval_fn=eval_fn, callbacks=[rec], eval_every=5).fit()
    assert [s for s, _ in rec.evals] == [5, 10, 12]  # every 5 steps, then at the end
    assert seen == [(False, False)] * 3
    assert rec.steps == list(range(1, 13))

    rec = Record()
    make_trainer(tmp_path / "b", eval_fn=eval_fn, callbacks=[rec], eval_every=0).fit()
    assert [s for s, _ in rec.evals] == [3, 6, 9, 12]  # each epoch end, no duplicate at 12

    class FreezeEmbedding(Callback):  # a part kept in eval mode stays so after evals
        def on_train_begin(self, trainer):
            assert trainer.model.training
            trainer.model.emb.eval()

    rec = Record()
    t = make_trainer(
        tmp_path / "c", eval_fn=eval_fn, callbacks=[rec, FreezeEmbedding()], eval_every=4
    )
    t.model.eval()  # fit puts the model in train mode
    t.fit()
    assert [s for s, _ in rec.evals] == [4, 8, 12]
    assert t.model.training and t.model.drop.training and not t.model.emb.training


def test_best_checkpoint_saved_and_reloadable(tmp_path):
    scores = iter([0.5, 0.9, 0.7, 0.8])
    snapshots = {}

    class Snap(Callback):
        def on_eval(self, trainer, metrics):
            snapshots[trainer.global_step] = weights(trainer.model)

    t = make_trainer(
        tmp_path, eval_fn=lambda m: {"accuracy": next(scores)}, eval_every=0, callbacks=[Snap()]
    )
    result = t.fit()
    assert result.best_step == 6 and result.best_metric == 0.9
    assert result.best_model_dir == str(tmp_path / "best")
    assert result.final_metrics == {"accuracy": 0.8}
    fresh = TinyClassifier()
    load_model(fresh, str(tmp_path / "best" / WEIGHTS_NAME))
    assert_same_weights(weights(fresh), snapshots[6], atol=0)
    assert not torch.allclose(snapshots[6]["head.weight"], weights(t.model)["head.weight"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".best")]

    # Lower is better.
    losses = iter([0.5, 0.3, 0.4, 0.2])
    r = make_trainer(
        tmp_path / "low",
        eval_fn=lambda m: {"loss": next(losses)},
        eval_every=0,
        metric_for_best="loss",
        greater_is_better=False,
    ).fit()
    assert (r.best_step, r.best_metric) == (12, 0.2)


def test_best_uses_save_pretrained_or_custom_fn(tmp_path):
    calls = []

    class Pretrained(TinyClassifier):
        def save_pretrained(self, path):
            calls.append(Path(path))
            (Path(path) / "config.json").write_text("{}")

    torch.manual_seed(0)
    cfg = TrainConfig(output_dir=str(tmp_path), **{**BASE, "max_steps": 3, "eval_every": 1})
    Trainer(Pretrained(), make_data(), cfg, eval_fn=accuracy).fit()
    assert calls and all(c.parent == tmp_path and c.name.startswith(".best.tmp") for c in calls)
    assert (tmp_path / "best" / "config.json").is_file()

    custom = []
    cfg2 = TrainConfig(output_dir=str(tmp_path / "c"), **{**BASE, "max_steps": 2, "eval_every": 1})
    Trainer(
        TinyClassifier(),
        make_data(),
        cfg2,
        eval_fn=accuracy,
        save_model_fn=lambda m, p: custom.append(p) or (p / "w.txt").write_text("x"),
    ).fit()
    assert (tmp_path / "c" / "best" / "w.txt").read_text() == "x" and custom


def test_trainable_params_leave_others_bit_identical(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier()
    before = weights(model)
    cfg = TrainConfig(output_dir=str(tmp_path), **{**BASE, "weight_decay": 0.1})
    Trainer(
        model, make_data(), cfg, eval_fn=accuracy, trainable_params=model.head.parameters()
    ).fit()
    after = weights(model)
    assert torch.equal(before["emb.weight"], after["emb.weight"])
    assert not torch.allclose(before["head.weight"], after["head.weight"])
    assert not torch.allclose(before["head.bias"], after["head.bias"])


def test_parameter_groups_keep_their_learning_rates_through_the_schedule(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier()
    cfg = TrainConfig(
        output_dir=str(tmp_path),
        **{**BASE, "max_steps": 4, "warmup_ratio": 0.0, "metric_for_best": None},
    )
    seen = []

    class Rates(Callback):
        def on_step_end(self, trainer, step):
            lr = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
            seen.append((lr[id(model.head.weight)], lr[id(model.emb.weight)]))

    Trainer(
        model,
        make_data(),
        cfg,
        eval_fn=None,
        callbacks=[Rates()],
        trainable_params=[
            {"params": list(model.head.parameters()), "lr": 1e-2},
            *[p for n, p in model.named_parameters() if not n.startswith("head.")],
        ],
    ).fit()
    assert seen[0][0] < 1e-2 and seen[1][0] < seen[0][0]  # the schedule decays both groups
    for head_lr, other_lr in seen[:-1]:
        assert head_lr / other_lr == pytest.approx(1e-2 / cfg.learning_rate)
    with pytest.raises(ConfigError, match="params"):
        Trainer(model, make_data(), cfg, trainable_params=[{"lr": 1.0}])


def test_grad_accumulation_matches_large_batch(tmp_path):
    runs = []
    for bs, accum in [(8, 1), (4, 2)]:
        torch.manual_seed(0)
        model = TinyClassifier(dropout=0.0)
        cfg = TrainConfig(
            output_dir=str(tmp_path / f"{bs}"),
            **{**BASE, "batch_size": bs, "grad_accum_steps": accum, "metric_for_best": None},
        )
        r = Trainer(model, make_data(), cfg).fit()
        runs.append((weights(model), r.global_step))
    assert runs[0][1] == runs[1][1] == 24
    assert_same_weights(runs[0][0], runs[1][0], atol=1e-5)


def test_reset_optimizer_after_replacing_a_module(tmp_path, reference):
    replaced = {}

    class Replace(Callback):
        def on_step_end(self, trainer, step):
            if step == 4:
                torch.manual_seed(99)
                trainer.model.head = nn.Linear(8, 2)
                replaced["init"] = weights(trainer.model.head)
                trainer.reset_optimizer()
                replaced["params"] = trainer.trainable_parameters

    t = make_trainer(tmp_path, callbacks=[Replace()])
    r = t.fit()
    head = weights(t.model.head)
    assert not torch.allclose(head["weight"], replaced["init"]["weight"])  # new head trained
    assert any(p is t.model.head.weight for p in replaced["params"])
    # The schedule continues: same learning rates as the uninterrupted reference.
    ref_lr = {h["step"]: h["lr"] for h in reference["result"].history if h["kind"] == "train"}
    lr = {h["step"]: h["lr"] for h in r.history if h["kind"] == "train"}
    assert lr == pytest.approx(ref_lr)


def test_early_stopping(tmp_path):
    r = make_trainer(
        tmp_path, eval_fn=lambda m: {"accuracy": 0.5}, eval_every=1, callbacks=[EarlyStopping(2)]
    ).fit()
    assert r.stopped_early and r.global_step == 3 and r.best_step == 1
    state = json.loads((tmp_path / "checkpoint" / TRAINER_STATE_NAME).read_text())
    assert state["should_stop"] and state["global_step"] == 3
    assert state["callbacks"][0]["state"] == {"best": 0.5, "bad_evals": 2}


def test_epoch_sampler_deterministic_per_seed_and_epoch():
    s = EpochSampler(50, seed=3)
    s.set_epoch(1)
    a = list(s)
    assert sorted(a) == list(range(50))
    assert list(EpochSampler(50, seed=3).__iter__()) != a  # epoch 0 differs from epoch 1
    t = EpochSampler(50, seed=3)
    t.set_epoch(1)
    assert list(t) == a
    torch.manual_seed(123)  # the global RNG plays no part
    assert list(t) == a
    assert list(EpochSampler(5, seed=3, shuffle=False)) == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------ checkpoint
def test_a_finished_run_drops_its_optimizer_state_and_resumes_as_finished(tmp_path):
    """The optimizer state is only needed to continue an unfinished run: deleted at the end
    (keep_optimizer keeps it); a resume of the finished run trains nothing and still works;
    a run planning more steps is refused with the reason."""
    t = make_trainer(tmp_path, max_steps=4)
    t.fit()
    d = tmp_path / "checkpoint"
    assert not (d / OPTIMIZER_NAME).exists()
    assert {WEIGHTS_NAME, RNG_STATE_NAME, TRAINER_STATE_NAME} <= {p.name for p in d.iterdir()}
    state = ckpt.read_trainer_state(d)
    assert state["optimizer_dropped"] is True and state["global_step"] == 4
    before = weights(t.model)
    again = make_trainer(tmp_path, max_steps=4)
    result = again.fit(resume=True)
    assert result.global_step == 4
    assert all(torch.equal(before[k], v) for k, v in weights(again.model).items())
    with pytest.raises(ConfigError, match="max_steps: checkpoint 4, now 6"):
        make_trainer(tmp_path, max_steps=6).fit(resume=True)


def test_an_interrupted_run_keeps_its_optimizer_state(tmp_path):
    """Only a finished run drops it: a checkpoint written mid-run still holds it."""
    t = make_trainer(tmp_path, max_steps=6, save_every=2)
    stop_at = 3

    class Stop(Callback):
        def on_step_end(self, trainer, step):
            if step == stop_at:
                raise KeyboardInterrupt

    t.callbacks.append(Stop())
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert (tmp_path / "checkpoint" / OPTIMIZER_NAME).is_file()


def test_checkpoint_contents(tmp_path):
    make_trainer(tmp_path, max_steps=4, keep_optimizer=True).fit()
    d = tmp_path / "checkpoint"
    assert {p.name for p in d.iterdir()} == {
        WEIGHTS_NAME,
        OPTIMIZER_NAME,
        RNG_STATE_NAME,
        TRAINER_STATE_NAME,
    }
    state = ckpt.read_trainer_state(d)
    assert state["global_step"] == 4 and state["config"]["learning_rate"] == 0.05
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)  # 1 epoch + 2 of 6 batches
    opt = torch.load(d / OPTIMIZER_NAME, weights_only=True)
    assert set(opt) == {"optimizer", "scheduler", "scaler"}
    assert opt["scheduler"]["last_epoch"] == 4
    tensors, meta = ckpt.load_rng_state(d / RNG_STATE_NAME)
    assert tensors["torch_cpu"].dtype == torch.uint8 and len(meta["python_random"][1]) == 625
    assert set(load_file(d / WEIGHTS_NAME)) == {"emb.weight", "head.weight", "head.bias"}


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    real = ckpt.save_optimizer
    calls = []

    def flaky(path, state):
        calls.append(path)
        if len(calls) == 2:
            real(path, state)  # a partial write, then the failure
            raise OSError("disk full")
        real(path, state)

    monkeypatch.setattr(ckpt, "save_optimizer", flaky)
    with pytest.raises(OSError, match="disk full"):
        make_trainer(tmp_path, eval_fn=None).fit()
    assert len(calls) == 2
    d = tmp_path / "checkpoint"
    assert ckpt.read_trainer_state(d)["global_step"] == 3  # the first save (epoch end)
    assert (d / OPTIMIZER_NAME).is_file() and (d / WEIGHTS_NAME).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "log.jsonl"]


def test_find_checkpoint_recovers_interrupted_swap(tmp_path):
    make_trainer(tmp_path, max_steps=2, eval_fn=None).fit()
    d = tmp_path / "checkpoint"
    os.replace(d, tmp_path / ".checkpoint.old-123")  # died between the two renames
    (tmp_path / ".checkpoint.tmp-step9").mkdir()  # an incomplete write
    assert find_checkpoint(tmp_path) == d
    assert ckpt.read_trainer_state(d)["global_step"] == 2
    assert find_checkpoint(tmp_path / "nothing") is None


def test_resume_repairs_output_dir_after_a_crash(tmp_path):
    make_trainer(tmp_path, max_steps=2, eval_every=1).fit()
    os.replace(tmp_path / "best", tmp_path / ".best.old-1")  # killed mid-swap
    (tmp_path / ".best.tmp-abc").mkdir()  # killed mid-write
    (tmp_path / ".checkpoint.tmp-step3").mkdir()
    r = make_trainer(tmp_path, max_steps=2, eval_every=1).fit(resume=True)
    assert r.best_model_dir == str(tmp_path / "best")
    assert (tmp_path / "best" / WEIGHTS_NAME).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "checkpoint", "log.jsonl"]


# ------------------------------------------------------------------------------ resume
def test_resume_after_crash_matches_uninterrupted_run(tmp_path, reference):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        make_trainer(out, callbacks=[StopAt(9)]).fit()
    state = ckpt.read_trainer_state(out / "checkpoint")
    # A raise from inside a step is not a clean stop: the last checkpoint is step 8, which
    # lies mid-epoch (epoch 2, 4 of its 6 batches consumed).
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (8, 2, 4)

    rec = Record()
    trainer = make_trainer(out, model_seed=123, callbacks=[rec])  # other init: must be loaded
    result = trainer.fit(resume=True)
    assert rec.steps == [9, 10, 11, 12]
    assert_same_weights(weights(trainer.model), reference["weights"])
    ref = reference["result"]
    ref_losses, losses = train_losses(ref.history), train_losses(result.history)
    assert len(losses) == 12
    for step in range(9, 13):
        assert losses[step] == pytest.approx(ref_losses[step], abs=1e-6)
    assert (result.best_step, result.best_metric) == (ref.best_step, ref.best_metric)
    assert result.final_metrics == pytest.approx(ref.final_metrics, abs=1e-6)
    # log.jsonl holds each step once (the replayed steps replaced the lost ones).
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["kind"] == "train"] == list(range(1, 13))


def test_rng_restore_matters(tmp_path, reference, monkeypatch):
    """Negative control: without restoring the RNG the resumed run diverges (dropout)."""
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        make_trainer(out, callbacks=[StopAt(9)]).fit()
    monkeypatch.setattr(ckpt, "restore_rng_state", lambda tensors, meta: None)
    trainer = make_trainer(out, model_seed=123)
    trainer.fit(resume=True)
    w = weights(trainer.model)
    assert not torch.allclose(w["head.weight"], reference["weights"]["head.weight"], atol=1e-6)


@pytest.mark.parametrize("kind", ["dataloader", "iterable"])
def test_resume_matches_for_loaders_and_iterable_data(tmp_path, kind):
    kw = dict(data=kind, max_steps=10) if kind == "iterable" else dict(data=kind)
    ref_t = make_trainer(tmp_path / "ref", **kw)
    ref = ref_t.fit()
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        make_trainer(out, callbacks=[StopAt(9)], **kw).fit()
    assert ckpt.read_trainer_state(out / "checkpoint")["step_in_epoch"] == 4
    t = make_trainer(out, model_seed=1, **kw)
    r = t.fit(resume=True)
    assert r.global_step == ref.global_step
    assert_same_weights(weights(t.model), weights(ref_t.model))
    assert train_losses(r.history) == pytest.approx(train_losses(ref.history), abs=1e-6)
    if kind == "iterable":  # 6 batches per epoch, found without a length
        assert [h["epoch"] for h in r.history if h["kind"] == "eval"] == [1, 3]  # steps 5, 10


def test_ctrl_c_saves_checkpoint_and_resume_matches(tmp_path):
    """SIGINT mid-run: the step finishes, a checkpoint is written, KeyboardInterrupt follows.

    Also covers a loss_fn with logged extras and a trained parameter outside the model.
    """

    def run(out, callbacks=(), resume=False, model_seed=0):
        torch.manual_seed(model_seed)
        model = TinyClassifier()
        scale = nn.Parameter(torch.tensor(1.0 + model_seed))

        def loss_fn(m, batch):
            out = m(**batch)
            loss = F.cross_entropy(out.logits * scale, batch["labels"])
            return loss, {"scale": scale.detach(), "plain": 1.5}

        cfg = TrainConfig(output_dir=str(out), **{**BASE, "log_every": 2})
        t = Trainer(
            model,
            make_data(),
            cfg,
            loss_fn=loss_fn,
            eval_fn=accuracy,
            callbacks=callbacks,
            trainable_params=[*model.parameters(), scale],
        )
        return t, t.fit(resume=resume), scale

    class SendSigint(Callback):
        def on_step_end(self, trainer, step):
            if step == 5:
                os.kill(os.getpid(), signal.SIGINT)

    ref_t, ref, ref_scale = run(tmp_path / "ref")
    out = tmp_path / "run"
    # A shell starts background jobs with SIGINT ignored, and the Trainer rightly leaves an
    # ignored SIGINT alone: give this test Python's own handler wherever it runs.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        handler_before = signal.getsignal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            run(out, callbacks=[SendSigint()])
        assert signal.getsignal(signal.SIGINT) is handler_before
    finally:
        signal.signal(signal.SIGINT, inherited)
    state = ckpt.read_trainer_state(out / "checkpoint")
    assert state["global_step"] == 5  # saved at the step boundary after the signal
    assert (out / "checkpoint" / ckpt.EXTRA_PARAMS_NAME).is_file()

    t, result, scale = run(out, resume=True, model_seed=3)
    assert result.global_step == 12
    assert_same_weights(weights(t.model), weights(ref_t.model))
    assert torch.allclose(scale, ref_scale, atol=1e-6) and not torch.equal(scale, torch.tensor(4.0))
    assert len(result.history) == len(ref.history)
    for a, b in zip(result.history, ref.history):  # losses, extras, lr, grad norms, evals
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-6), (a["step"], k)
    assert {h["plain"] for h in result.history if h["kind"] == "train"} == {1.5}

    # With SIGINT ignored (a background job), the Trainer leaves it so: the run completes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _, result, _ = run(tmp_path / "ignored", callbacks=[SendSigint()])
        assert result.global_step == 12
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, inherited)


def _child_train(out_dir: str, sleep: float, result_file: str | None, model_seed: int) -> None:
    """Runs in a forked process: train the BASE setup (resuming if possible)."""
    torch.set_num_threads(1)  # fork-safety of the OpenMP pool

    class Slow(Callback):
        def on_step_end(self, trainer, step):
            time.sleep(sleep)

    trainer = make_trainer(out_dir, model_seed=model_seed, callbacks=[Slow()])
    start = {}

    class Start(Callback):
        def on_train_begin(self, trainer):
            start["step"] = trainer.global_step

    trainer.callbacks.append(Start())
    result = trainer.fit(resume=True)
    if result_file:
        save_file(weights(trainer.model), result_file)
        Path(result_file + ".json").write_text(
            json.dumps({"start": start["step"], "history": result.history})
        )


def test_sigkill_subprocess_then_resume_matches(tmp_path, reference):
    ctx = multiprocessing.get_context("fork")
    out = tmp_path / "run"
    proc = ctx.Process(target=_child_train, args=(str(out), 0.15, None, 0))
    proc.start()
    state_file = out / "checkpoint" / TRAINER_STATE_NAME
    deadline = time.monotonic() + 60
    while not state_file.is_file():
        assert proc.is_alive() and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL

    killed_at = ckpt.read_trainer_state(find_checkpoint(out))["global_step"]
    assert 0 < killed_at < 12

    result_file = str(tmp_path / "final.safetensors")
    proc = ctx.Process(target=_child_train, args=(str(out), 0.0, result_file, 5))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    info = json.loads(Path(result_file + ".json").read_text())
    assert info["start"] >= killed_at > 0  # it really resumed
    assert_same_weights(load_file(result_file), reference["weights"])
    ref_losses = train_losses(reference["result"].history)
    losses = train_losses(info["history"])
    assert losses == pytest.approx(ref_losses, abs=1e-6)


def test_resume_config_mismatch_names_the_field(tmp_path):
    make_trainer(tmp_path, max_steps=4, eval_fn=None).fit()
    with pytest.raises(ConfigError) as err:
        make_trainer(tmp_path, max_steps=4, eval_fn=None, learning_rate=0.02).fit(resume=True)
    msg = str(err.value)
    assert "learning_rate" in msg and "0.05" in msg and "0.02" in msg
    with pytest.raises(ConfigError, match="batch_size: checkpoint 8, now 4"):
        make_trainer(tmp_path, max_steps=4, eval_fn=None, batch_size=4).fit(resume=True)
    with pytest.raises(ConfigError, match="seed"):
        make_trainer(tmp_path, max_steps=4, eval_fn=None, seed=1).fit(resume=True)
    # Settings that do not change the result may differ.
    r = make_trainer(tmp_path, max_steps=4, eval_fn=None, log_every=3, save_every=1).fit(
        resume=True
    )
    assert r.global_step == 4


class HeadFirst(TinyClassifier):
    """The same parameters under the same names, registered in another order."""

    def __init__(self):
        nn.Module.__init__(self)
        self.head = nn.Linear(8, 2)
        self.drop = nn.Dropout(0.3)
        self.emb = nn.Embedding(VOCAB, 8)


def test_resume_refuses_optimizer_state_of_another_parameter_order(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path, max_steps=6, eval_fn=None, callbacks=[StopAt(5)]).fit()
    cfg = TrainConfig(output_dir=str(tmp_path), **{**BASE, "max_steps": 6, "metric_for_best": None})
    trainer = Trainer(HeadFirst(), make_train_data("dataset", cfg.batch_size), cfg)
    with pytest.raises(ArtifactError, match="another order") as err:
        trainer.fit(resume=True)
    assert "head.weight has shape (2, 8)" in str(err.value)


def test_resume_without_checkpoint_starts_fresh(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="gearshift.train"):
        r = make_trainer(tmp_path, max_steps=2, eval_fn=None).fit(resume=True)
    assert r.global_step == 2
    assert any("no checkpoint" in rec.getMessage() for rec in caplog.records)
    with pytest.raises(ArtifactError, match="not a complete gearshift checkpoint"):
        make_trainer(tmp_path / "x", max_steps=2, eval_fn=None).fit(resume_from=tmp_path / "nope")


def test_resume_finished_run_is_a_no_op(tmp_path):
    first = make_trainer(tmp_path, max_steps=3)
    r1 = first.fit()
    rec = Record()
    second = make_trainer(tmp_path, max_steps=3, callbacks=[rec], model_seed=9)
    r2 = second.fit(resume_from=tmp_path / "checkpoint")
    assert rec.steps == [] and r2.global_step == 3
    assert_same_weights(weights(second.model), weights(first.model), atol=0)
    assert r2.history == r1.history


def test_bad_inputs_raise_config_errors(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path), **BASE)
    with pytest.raises(ConfigError, match="eval_fn"):
        Trainer(TinyClassifier(), make_data(), cfg)  # metric_for_best without eval_fn
    with pytest.raises(ConfigError, match="default loss"):
        Trainer(TinyClassifier(), [torch.zeros(2)] * 4, cfg, eval_fn=accuracy).fit()
    with pytest.raises(ConfigError, match="nothing to train"):
        make_trainer(tmp_path, trainable_params=[])
    t = make_trainer(tmp_path, eval_fn=None, loss_fn=lambda m, b: torch.ones(2))
    with pytest.raises(ConfigError, match="scalar"):
        t.fit()
    t = make_trainer(tmp_path, eval_fn=lambda m: {"acc": 1.0}, eval_every=1)
    with pytest.raises(ConfigError, match="accuracy"):
        t.fit()
    with pytest.raises(ConfigError, match="max_steps"):
        make_trainer(tmp_path, data="iterable")


def test_length_grouping_keeps_every_example_and_cuts_padding():
    from gearshift.train.loop import EpochSampler

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 100, (1000,), generator=g).tolist()
    sampler = EpochSampler(1000, seed=3, lengths=lengths, batch_size=10)
    sampler.set_epoch(1)
    order = list(sampler)
    assert sorted(order) == list(range(1000))
    assert order == list(sampler)  # deterministic per (seed, epoch)
    padded = sum(max(lengths[i] for i in order[k : k + 10]) * 10 for k in range(0, 1000, 10))
    plain = list(EpochSampler(1000, seed=3))
    padded_plain = sum(max(lengths[i] for i in plain[k : k + 10]) * 10 for k in range(0, 1000, 10))
    assert padded < 0.7 * padded_plain
    sampler.set_epoch(2)
    assert list(sampler) != order

"""Slenderized multi-exit models on tiny random models: batched early exit equals running
rows alone, offline replay equals online exit, FLOPs, Taylor scores, pruning, the low-rank
embedding, targets, gradient equilibrium, folders, and the whole pipeline with resume."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from gearshift.errors import ArtifactError, ConfigError
from gearshift.measure import count_flops, fixed_length_batch
from gearshift.methods.slim import (
    Entropy,
    ExitConfig,
    MultiExitModel,
    Patience,
    SlimConfig,
    Widths,
    current_widths,
    equilibrium_plan,
    exit_flops,
    factorize_word_embedding,
    load_multi_exit,
    model_cost,
    prune,
    run_slim,
    save_multi_exit,
    scale_grad,
    schedule,
    select,
    simulate,
    taylor_importance,
    widths_for_ratio,
)
from gearshift.runtime import BlockShape, ModelConfig, Transformer, load_pretrained
from gearshift.runtime.io import load_model, save_model

TOL = 1e-5


def tiny(kind="classification", labels=3, layers=4, seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        family="bert",
        vocab_size=60,
        hidden_size=16,
        num_layers=layers,
        head_dim=4,
        blocks=[BlockShape(4, 32) for _ in range(layers)],
        layer_to_block=list(range(layers)),
        max_positions=64,
        type_vocab_size=2,
        head={"kind": kind, "num_labels": labels if kind == "classification" else 1},
        **kw,
    )
    return Transformer(cfg).eval()


def multi(seed=0, pool="first", **kw) -> MultiExitModel:
    model = MultiExitModel(tiny(seed=seed, **kw), ExitConfig(pool=pool))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # confident, different exits so the criteria have work to do
        for p in model.exits.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 2.0)
    return model.eval()


def batch(n=6, length=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (n, length), generator=g)
    mask = torch.ones_like(ids)
    for row in range(n):
        mask[row, length - (row % 4) * 2 :] = 0
    return ids, mask


# ---------------------------------------------------------------------- early exit
@pytest.mark.parametrize("pool", ["first", "mean"])
@pytest.mark.parametrize(
    "criterion", [Entropy(0.6), Entropy([0.2, 0.9, 0.5]), Patience(1), Patience(2)]
)
def test_batched_early_exit_equals_rows_alone(criterion, pool):
    model = multi(pool=pool)
    ids, mask = batch()
    with model.criterion(criterion):
        out = model(ids, mask)
        alone = [model(ids[i : i + 1, : int(mask[i].sum())]) for i in range(len(ids))]
    steps = torch.cat([a.exit_step for a in alone])
    assert torch.equal(out.exit_step, steps)
    assert torch.allclose(out.logits, torch.cat([a.logits for a in alone]), atol=TOL)
    assert 0 < len(set(steps.tolist())) and steps.min() < model.num_exits - 1  # some exit early


@pytest.mark.parametrize("pool", ["first", "mean"])
def test_offline_replay_equals_online_exit(pool):
    model = multi(pool=pool)
    ids, mask = batch(n=12, seed=3)
    with torch.no_grad():
        recorded = torch.stack(model.forward_all(ids, mask).exit_logits, dim=1)
    for crit in (Entropy(0.5), Entropy([0.1, 1.0, 0.3]), Patience(1), Patience(2)):
        sim = simulate(crit, recorded)
        with model.criterion(crit):
            out = model(ids, mask)
        assert torch.equal(sim.exit_layer, out.exit_step)
        assert torch.allclose(sim.logits, out.logits, atol=TOL)


def test_mean_pooled_exits_read_real_tokens_only():
    model = multi(pool="mean")
    ids, mask = batch()
    with torch.no_grad():
        out = model.forward_all(ids, mask)
        h = out.hidden_states[0]
        for row in range(len(ids)):
            n = int(mask[row].sum())
            expected = model.exits[0](h[row : row + 1, :n])  # no mask: every token is real
            assert torch.allclose(out.exit_logits[0][row], expected[0], atol=TOL)
        # ... and differ from the first token's exit
        first = model.exits[0].out(torch.tanh(h[:, 0]))
    assert not torch.allclose(first, out.exit_logits[0], atol=1e-3)
    with pytest.raises(ConfigError, match="exit pool"):
        MultiExitModel(tiny(), ExitConfig(pool="max"))


def test_full_depth_without_criterion_is_the_base_model():
    model = multi()
    ids, mask = batch()
    assert torch.equal(model(ids, mask).logits, model.base(ids, mask).logits)
    assert torch.equal(model.forward_all(ids, mask).exit_logits[-1], model.base(ids, mask).logits)


def test_criteria_on_regression_and_bad_settings():
    model = multi(kind="regression")
    ids, mask = batch()
    with pytest.raises(ConfigError, match="regression"):
        model(ids, mask, criterion=Entropy(0.5))
    out = model(ids, mask, criterion=Patience(1, tolerance=100.0))  # always agree: leave at 1
    assert out.exit_step.tolist() == [1] * len(ids)
    with pytest.raises(ConfigError, match="patience"):
        Patience(0)
    with pytest.raises(ConfigError, match="one per exit"):
        simulate(Entropy([0.1]), torch.randn(2, 3, 2))


def test_criterion_switch_is_per_thread():
    model = multi()
    ids, mask = batch()
    refs = {}
    for name, crit in {"none": None, "e": Entropy(0.5), "p": Patience(1)}.items():
        refs[name] = model(ids, mask, criterion=crit).logits
    errors = []

    def serve(name):
        model.use_criterion({"none": None, "e": Entropy(0.5), "p": Patience(1)}[name])
        for _ in range(10):
            if not torch.allclose(model(ids, mask).logits, refs[name], atol=TOL):
                errors.append(name)

    threads = [threading.Thread(target=serve, args=(n,)) for n in ("none", "e", "p", "e")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("pooler, pool", [("tanh", "first"), ("dense", "first"), ("tanh", "mean")])
@pytest.mark.parametrize("leave_at", [0, 1, 3])
def test_exit_flops_match_counted_early_exit(pooler, pool, leave_at):
    model = MultiExitModel(tiny(layers=4, word_rank=5), ExitConfig(pooler=pooler, pool=pool)).eval()
    thresholds = [math.inf if i == leave_at else -1.0 for i in range(3)]
    n = 9
    inputs = fixed_length_batch(model.config, n, 1)
    with model.criterion(Entropy(thresholds)):
        counted = count_flops(model, inputs)
        assert int(model(**inputs).exit_step) == leave_at
    assert counted == exit_flops(model, n)[leave_at]


# ---------------------------------------------------------------------- importance and pruning
def test_taylor_scores_are_gate_gradients():
    model = multi()
    ids, mask = batch()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])

    def loss_fn(m, b):
        out = m.forward_all(*b)
        return sum(m.base.task_loss(lg, labels) for lg in out.exit_logits)

    scores = taylor_importance(model, [(ids, mask)], loss_fn)
    assert all(p.grad is None for p in model.parameters())  # scoring leaves no gradients
    layer, dh = 1, 4
    block = model.base.blocks[layer]
    w_o, w_out = block.attn.o.weight.detach().clone(), block.ffn.out.weight.detach().clone()
    gate_h = torch.ones(4, requires_grad=True)
    gate_n = torch.ones(32, requires_grad=True)
    block.attn.o.weight = torch.nn.Parameter(w_o)  # fresh leaf, then gate it functionally
    orig_o, orig_f = block.attn.o.forward, block.ffn.out.forward
    block.attn.o.forward = lambda x: torch.nn.functional.linear(
        x * gate_h.repeat_interleave(dh), w_o, block.attn.o.bias
    )
    block.ffn.out.forward = lambda x: torch.nn.functional.linear(
        x * gate_n, w_out, block.ffn.out.bias
    )
    loss_fn(model, (ids, mask)).backward()
    block.attn.o.forward, block.ffn.out.forward = orig_o, orig_f
    assert torch.allclose(scores.heads[layer], gate_h.grad.abs(), atol=1e-5)
    assert torch.allclose(scores.neurons[layer], gate_n.grad.abs(), atol=1e-5)


def test_pruning_silent_units_changes_nothing_and_round_trips(tmp_path):
    base = tiny()
    with torch.no_grad():  # head 2 of layer 0 and neurons 5..31 of layer 2 contribute nothing
        base.blocks[0].attn.o.weight[:, 8:12] = 0
        base.blocks[2].ffn.out.weight[:, 5:] = 0
    keep_h = [[0, 1, 3], [0, 1, 2, 3], [0, 1, 2, 3], []]
    keep_n = [list(range(32)), list(range(32)), list(range(5)), list(range(32))]
    with torch.no_grad():
        base.blocks[3].attn.o.weight.zero_()  # layer 3 loses every head
    ids, mask = batch()
    small = prune(base, keep_h, keep_n)
    assert [b.num_heads for b in small.config.blocks] == [3, 4, 4, 0]
    assert [b.intermediate_size for b in small.config.blocks] == [32, 32, 5, 32]
    assert torch.allclose(small(ids, mask).logits, base(ids, mask).logits, atol=TOL)
    save_model(small, tmp_path / "s")
    again = load_model(tmp_path / "s")
    assert again.config.blocks == small.config.blocks
    assert torch.equal(again(ids, mask).logits, small(ids, mask).logits)
    with pytest.raises(ConfigError, match="out of range"):
        prune(base, [[9]] * 4, keep_n)


def test_low_rank_word_embedding_is_the_truncated_svd():
    base = tiny()
    w = base.embeddings.word.weight.detach()
    low = factorize_word_embedding(base, 6)
    approx = low.embeddings.word.codes.weight @ low.embeddings.word.projection.weight.t()
    s = torch.linalg.svdvals(w)
    assert torch.allclose((approx - w).norm(), s[6:].norm(), rtol=1e-4)
    lower = factorize_word_embedding(low, 3)  # again, from the factorized form
    assert lower.config.word_rank == 3 and lower.embeddings.word.codes.weight.shape == (60, 3)
    with pytest.raises(ConfigError, match="rank"):
        factorize_word_embedding(base, 16)


def test_select_per_layer_and_global():
    scores = [torch.tensor([1.0, 5.0, 3.0]), torch.tensor([0.1, 0.2, 10.0])]
    assert select(scores, [1, 2]) == [[1], [1, 2]]
    kept = select(scores, [2, 2], global_ranking=True)
    assert sum(map(len, kept)) == 4
    normed = [s / s.norm() for s in scores]
    flat = sorted(
        ((float(v), i, j) for i, s in enumerate(normed) for j, v in enumerate(s)), reverse=True
    )
    expect = [sorted(j for _, i, j in flat[:4] if i == layer) for layer in range(2)]
    assert kept == expect


def test_target_widths_and_schedule():
    cfg = tiny().config
    w = widths_for_ratio(cfg, 0.5, "flops")
    full = model_cost(cfg, current_widths(cfg))
    assert abs(model_cost(cfg, w) / full - 0.5) < 0.05
    p = widths_for_ratio(cfg, 0.6, "params", word_rank=4)
    assert (
        abs(model_cost(cfg, p, "params") / model_cost(cfg, current_widths(cfg), "params") - 0.6)
        < 0.05
    )
    steps = schedule(current_widths(cfg), Widths(1, 8, 4), 4, 3)
    heads = [s.heads[0] for s in steps]
    assert heads == sorted(heads, reverse=True) and heads[-1] == 1 and steps[-1].ffn == [8] * 4
    with pytest.raises(ConfigError, match="exceed"):
        schedule(Widths(2, 8), Widths(3, 8), 4, 2)
    with pytest.raises(ConfigError, match="target ratio"):
        widths_for_ratio(cfg, 1.5)


def test_gradient_equilibrium_scales_gradients_not_outputs():
    x = torch.ones(3, requires_grad=True)
    scale_grad(x, 0.25).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 0.25))
    model = multi()
    ids, mask = batch()
    plain = model.forward_all(ids, mask)
    ge = model.forward_all(
        ids, mask, plan=equilibrium_plan(4), exit_grad_scales=[1, 0.5, 0.3, 0.25]
    )
    assert all(torch.equal(a, b) for a, b in zip(plain.exit_logits, ge.exit_logits))
    # the last exit's gradient reaching the embeddings is scaled by 1/4 * prod((L-l-1)/(L-l))
    emb = model.base.embeddings.word.weight
    g1 = torch.autograd.grad(model.forward_all(ids, mask).exit_logits[-1].sum(), emb)[0]
    out = model.forward_all(
        ids, mask, plan=equilibrium_plan(4), exit_grad_scales=[1.0, 1.0, 1.0, 0.25]
    )
    g2 = torch.autograd.grad(out.exit_logits[-1].sum(), emb)[0]
    assert torch.allclose(g2, g1 * 0.25 * (3 / 4) * (2 / 3) * (1 / 2), atol=1e-6)


# ---------------------------------------------------------------------- folders
@pytest.mark.parametrize("pool", ["first", "mean"])
def test_multi_exit_folders_round_trip(tmp_path, pool):
    model = multi(pool=pool)
    ids, mask = batch()
    folder = save_multi_exit(model, tmp_path / "m", extra={"task": {"name": "sst2"}})
    again = load_multi_exit(folder)
    generic = load_pretrained(str(folder))
    for m in (again, generic):
        for a, b in zip(
            m.forward_all(ids, mask).exit_logits, model.forward_all(ids, mask).exit_logits
        ):
            assert torch.equal(a, b)
    save_model(model.base, tmp_path / "plain")
    with pytest.raises(ArtifactError, match="MultiExitModel"):
        load_multi_exit(tmp_path / "plain")
    with pytest.raises(ConfigError, match="classification or regression"):
        MultiExitModel(tiny(kind="token_classification", labels=3))


# ---------------------------------------------------------------------- the pipeline
def features(n=64, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(1, 60, (length,), generator=g).tolist(),
            "attention_mask": [1] * length,
            "labels": int(torch.randint(0, 3, (), generator=g)),
        }
        for _ in range(n)
    ]


def collate(items):
    return {
        k: torch.tensor([f[k] for f in items]) for k in ("input_ids", "attention_mask", "labels")
    }


def slim_config(**kw) -> SlimConfig:
    base = dict(
        heads=1,
        ffn=8,
        word_rank=6,
        iterations=2,
        ta_steps=4,
        steps_per_iteration=3,
        recovery_steps=3,
        batch_size=8,
        calibration_batches=2,
        learning_rate=1e-3,
    )
    base.update(kw)
    return SlimConfig(**base)


def test_pipeline_reaches_the_target_and_resumes(tmp_path):
    teacher = tiny(seed=5)
    results = run_slim(
        teacher, features(), collate, slim_config(), tmp_path / "run", progress=False
    )
    assert [r.name for r in results] == ["ta", "prune-1", "prune-2", "recover"]
    final = load_multi_exit(results[-1].model_dir)
    assert [b.num_heads for b in final.config.blocks] == [1] * 4
    assert [b.intermediate_size for b in final.config.blocks] == [8] * 4
    assert final.config.word_rank == 6
    mid = load_multi_exit(results[1].model_dir)
    assert [b.num_heads for b in mid.config.blocks] == [2] * 4  # half way: round(2.5) = 2
    assert [b.intermediate_size for b in mid.config.blocks] == [20] * 4
    ids, mask = batch()
    before = final.forward_all(ids, mask).exit_logits[0]
    again = run_slim(teacher, features(), collate, slim_config(), tmp_path / "run", progress=False)
    assert torch.equal(
        load_multi_exit(again[-1].model_dir).forward_all(ids, mask).exit_logits[0], before
    )
    assert torch.equal(teacher.blocks[0].attn.q.weight, tiny(seed=5).blocks[0].attn.q.weight)


def test_static_pruning_and_ratio_targets(tmp_path):
    teacher = tiny(seed=5)
    cfg = slim_config(heads=None, ffn=None, target_ratio=0.5, word_rank=None, exits=False)
    results = run_slim(teacher, features(), collate, cfg, tmp_path / "static", progress=False)
    assert [r.name for r in results] == ["prune-1", "prune-2", "recover"]
    final = load_multi_exit(results[-1].model_dir).base
    ratio = model_cost(final.config, current_widths(final.config)) / model_cost(
        teacher.config, current_widths(teacher.config)
    )
    assert abs(ratio - 0.5) < 0.06
    with pytest.raises(ConfigError, match="target"):
        SlimConfig().validate()


def test_interrupted_pipeline_resumes_from_the_pruned_folder(tmp_path):
    import shutil

    teacher = tiny(seed=5)
    first = run_slim(teacher, features(), collate, slim_config(), tmp_path / "run", progress=False)
    ids, mask = batch()
    want = load_multi_exit(first[-1].model_dir).forward_all(ids, mask).exit_logits
    # as if killed during prune-2's distillation: its pruned model exists, nothing after
    for name in ("recover", "prune-2/model", "prune-2/checkpoint", "prune-2/log.jsonl"):
        path = tmp_path / "run" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    assert (tmp_path / "run" / "prune-2" / "pruned" / "gearshift.json").is_file()
    again = run_slim(teacher, features(), collate, slim_config(), tmp_path / "run", progress=False)
    got = load_multi_exit(again[-1].model_dir).forward_all(ids, mask).exit_logits
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))


def test_deep_copies_keep_their_own_criterion():
    import copy

    model = multi()
    model.use_criterion(Entropy(0.5))
    twin = copy.deepcopy(model)
    assert twin.active_criterion is None and model.active_criterion is not None
    ids, mask = batch()
    assert torch.equal(twin(ids, mask).logits, model.base(ids, mask).logits)


def test_truncated_teacher_is_its_first_layers():
    from gearshift.methods.slim.jobs import truncate_layers
    from gearshift.runtime.plan import ForwardPlan, Step

    model = tiny()
    cut = truncate_layers(model, 2)
    assert cut.config.num_layers == 2 and len(cut.blocks) == 2
    ids, mask = batch()
    plan = ForwardPlan(steps=[Step(0, 0), Step(1, 1)])
    assert torch.allclose(cut(ids, mask).logits, model(ids, mask, plan=plan).logits, atol=TOL)
    with pytest.raises(ConfigError, match="cannot keep"):
        truncate_layers(model, 5)


def test_pipeline_on_a_regression_task(tmp_path):
    teacher = tiny(kind="regression", seed=2)
    feats = [dict(f, labels=float(f["labels"])) for f in features(32)]

    def collate_reg(items):
        out = collate(items)
        out["labels"] = out["labels"].float()
        return out

    cfg = slim_config(heads=2, ffn=16, word_rank=None, iterations=1, gradient_equilibrium=True)
    results = run_slim(teacher, feats, collate_reg, cfg, tmp_path / "reg", progress=False)
    final = load_multi_exit(results[-1].model_dir)
    ids, mask = batch()
    out = final(ids, mask, criterion=Patience(1, tolerance=10.0))
    assert out.logits.shape == (len(ids),) and out.exit_step.tolist() == [1] * len(ids)


def test_regression_exits_replay_and_sweep_like_the_head():
    model = multi(kind="regression")
    ids, mask = batch(n=10, seed=4)
    out = model.forward_all(ids, mask)
    assert all(lg.shape == (10,) for lg in out.exit_logits)  # exits shaped like the head
    recorded = torch.stack(out.exit_logits, dim=1)  # (N, L)
    for crit in (Patience(1, tolerance=0.5), Patience(2, tolerance=0.5)):
        sim = simulate(crit, recorded)
        online = model(ids, mask, criterion=crit)
        assert torch.equal(sim.exit_layer, online.exit_step)
        assert torch.allclose(sim.logits, online.logits, atol=TOL)


def test_regression_sweep_widens_the_tolerance():
    from types import SimpleNamespace

    from gearshift.methods.slim.jobs import REGRESSION_TOLERANCES, criteria_for

    reg = SimpleNamespace(kind="regression")
    crits = criteria_for(reg, [0.1, 0.3], num_layers=4)
    assert {(c.patience, c.tolerance) for c in crits} == {
        (t, tol) for tol in REGRESSION_TOLERANCES for t in (1, 2, 3)
    }
    assert len({c.describe() for c in crits}) == len(crits)  # each row named apart
    cls = criteria_for(SimpleNamespace(kind="classification"), [0.1, 0.3], num_layers=4)
    assert [c.describe() for c in cls] == [
        "entropy < 0.1",
        "entropy < 0.3",
        "patience 1",
        "patience 2",
        "patience 3",
    ]
    # a wider tolerance never keeps a row running longer: the exit layers only fall
    model = multi(kind="regression")
    ids, mask = batch(n=16, seed=5)
    recorded = torch.stack(model.forward_all(ids, mask).exit_logits, dim=1)
    layers = [simulate(Patience(1, tolerance=t), recorded).exit_layer for t in (0.0, 0.05, 1e9)]
    assert bool((layers[1] <= layers[0]).all()) and bool((layers[2] <= layers[1]).all())
    assert layers[2].tolist() == [1] * 16  # any two predictions agree: leave at exit 1


def test_slim_stage_keeps_the_optimizer_only_when_asked():
    """`gearshift slim --keep-optimizer` reaches the trainer of every stage."""
    from pathlib import Path

    from gearshift.cli import build_parser
    from gearshift.methods.slim.cli import config_from_args
    from gearshift.methods.slim.train import _trainer_config

    argv = ["slim", "--model", "T", "--output", "O", "--heads", "2", "--ffn", "8"]
    plain = config_from_args(build_parser(argv).parse_args(argv))
    kept = config_from_args(
        build_parser(argv + ["--keep-optimizer"]).parse_args(argv + ["--keep-optimizer"])
    )
    assert not _trainer_config(plain, Path("o"), 10, False).keep_optimizer
    assert _trainer_config(kept, Path("o"), 10, False).keep_optimizer

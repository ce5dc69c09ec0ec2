"""Step-size acceleration: schedules, Euler/Heun exactness, run-time switching (threads),
decoders with the key/value cache, making shared models, and their (step-aware) distillation."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from gearshift.errors import ConfigError
from gearshift.methods.steps import (
    ShareDistillation,
    StepModel,
    collate_blocks,
    decoder_config,
    distil_shared,
    draw_group_sizes,
    generate,
    held_out_fidelity,
    lm_blocks,
    make_shared,
    make_steps,
    perplexity,
    step_aware_loss,
    step_plan,
    step_sizes,
    steps_for_group_sizes,
    steps_for_size,
    steps_from_sizes,
)
from gearshift.runtime import BlockShape, ModelConfig, Transformer, load_pretrained
from gearshift.runtime.io import load_model, save_model
from gearshift.runtime.modules import AttentionMask
from gearshift.runtime.plan import ForwardPlan
from gearshift.train import Callback, TrainConfig

TOL = 1e-5


def tiny(layers: int = 6, groups: int | None = None, norm: str = "post", seed: int = 0, **kw):
    torch.manual_seed(seed)
    groups = groups or layers
    cfg = ModelConfig(
        family="bert" if norm == "post" else "gpt2",
        vocab_size=60,
        hidden_size=16,
        num_layers=layers,
        head_dim=4,
        blocks=[BlockShape(4, 32) for _ in range(groups)],
        layer_to_block=[i * groups // layers for i in range(layers)],
        max_positions=64,
        norm_position=norm,
        embedding_norm=norm == "post",
        final_norm=norm == "pre",
        causal=norm == "pre",
        head=kw.pop("head", {"kind": "classification", "num_labels": 3}),
        **kw,
    )
    return Transformer(cfg).eval()


def batch(n: int = 3, length: int = 10, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (n, length), generator=g)
    mask = torch.ones_like(ids)
    for row, cut in enumerate(range(length, 0, -3)[:n]):
        mask[row, cut:] = 0
    return ids, mask


# ---------------------------------------------------------------------- schedules
def test_step_sizes_cover_the_depth():
    assert step_sizes([0] * 6, 4) == [1.5] * 4
    assert step_sizes([0] * 6, 6) == [1.0] * 6
    assert step_sizes([0] * 6, 5) == pytest.approx([1.2] * 5)
    assert step_sizes([0, 0, 0, 1, 1, 1], 4) == [1.5] * 4
    assert step_sizes([0, 0, 0, 1, 1, 1], 2) == [3.0, 3.0]
    assert step_sizes([0, 0, 0, 1, 1, 1], 3) == [1.5, 1.5, 3.0]
    assert step_sizes([0, 1, 2, 3], 4) == [1.0] * 4
    for mapping in ([0] * 6, [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1, 2, 2]):
        for n in range(len(set(mapping)), len(mapping) + 3):
            sizes = step_sizes(mapping, n)
            assert len(sizes) == n and sum(sizes) == pytest.approx(len(mapping))


def test_bad_schedules_say_why():
    with pytest.raises(ConfigError, match="cannot cover 2 groups"):
        step_sizes([0, 0, 1, 1], 1)
    with pytest.raises(ConfigError, match="sum to 5"):
        steps_from_sizes([0] * 6, [2, 3])
    with pytest.raises(ConfigError, match="positive"):
        steps_from_sizes([0] * 6, [7, -1])
    with pytest.raises(ConfigError, match="exactly one"):
        make_steps([0] * 6)
    with pytest.raises(ConfigError, match="solver"):
        step_plan([0] * 6, 3, solver="rk4")


def test_unequal_steps_pick_the_block_at_their_start():
    steps = steps_from_sizes([0, 0, 0, 1, 1, 1], [2, 2, 2])
    assert [s.block for s in steps] == [0, 0, 1]  # the second step starts at t=2, in group 0
    assert [s.layer for s in steps] == [1, 3, 5]
    steps = steps_from_sizes([0] * 6, [2.5, 2.5, 1])
    assert [(s.layer, s.step_size) for s in steps] == [(2, 2.5), (4, 2.5), (5, 1.0)]


# ---------------------------------------------------------------------- solvers
@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("groups", [1, 2, 6])
def test_euler_at_step_one_is_the_model(norm, groups):
    model = tiny(groups=groups, norm=norm)
    ids, mask = batch()
    ref = model(ids, mask).logits
    got = model(ids, mask, plan=step_plan(model.config, 6)).logits
    assert torch.equal(ref, got)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_euler_and_heun_follow_their_formulas(norm):
    model = tiny(groups=1, norm=norm)
    ids, mask = batch()
    m = AttentionMask.from_attention_mask(mask, model.config.causal, 0)
    block = model.blocks[0]

    def f(h):
        return block(h, m)[0] - h

    def final(h):  # the last hidden state is the final LayerNorm's output where there is one
        return model.final_norm(h) if model.final_norm is not None else h

    h = model.embeddings(ids, None, None, 0)
    euler = h.clone()
    for _ in range(3):  # 3 steps of size 2
        euler = euler + 2.0 * f(euler)
    out = model(ids, mask, plan=step_plan(model.config, 3), output_hidden_states=True)
    assert torch.allclose(out.hidden_states[3], final(euler), atol=TOL)

    heun = h.clone()
    for _ in range(2):  # 2 Heun steps of size 3
        k1 = f(heun)
        g = heun + 3.0 * k1
        heun = heun + 1.5 * (k1 + f(g))
    out = model(
        ids, mask, plan=step_plan(model.config, 2, solver="heun"), output_hidden_states=True
    )
    assert torch.allclose(out.hidden_states[2], final(heun), atol=TOL)


def test_step_plan_keeps_other_attach_points():
    model = tiny(groups=1)
    seen = []

    def exit_fn(layer, h, mask, rows):
        seen.append(layer)
        return None

    plan = step_plan(model.config, 3, base=ForwardPlan(exit=exit_fn))
    model(*batch(), plan=plan)
    assert seen == [1, 3]  # exits after steps ending at layers 1, 3 (not after the last)


# ---------------------------------------------------------------------- run-time switching
def test_step_model_switches_per_thread():
    model = tiny(groups=1)
    sm = StepModel(model)
    ids, mask = batch()
    refs = {n: model(ids, mask, plan=step_plan(model.config, n)).logits for n in (2, 3, 6)}
    assert torch.equal(sm(ids, mask).logits, refs[6])
    with sm.steps(2):
        assert torch.equal(sm(ids, mask).logits, refs[2])
    assert sm.setting == (None, "euler")
    errors = []

    def serve(n: int) -> None:
        try:
            sm.use_steps(n)
            for _ in range(20):
                if not torch.equal(sm(ids, mask).logits, refs[n]):
                    errors.append(n)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(n,)) for n in (2, 3, 6, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with pytest.raises(ConfigError, match="groups"):
        StepModel(tiny(groups=2)).use_steps(1)
    # an extra plan composes under the merge rules: a second step schedule is refused
    assert torch.equal(sm(ids, mask, plan=ForwardPlan()).logits, refs[6])
    with sm.steps(2), pytest.raises(ConfigError, match="steps and other both set the layer loop"):
        sm(ids, mask, plan=ForwardPlan(steps=step_plan(model.config, 3).steps, provider="other"))


# ---------------------------------------------------------------------- decoders
def tiny_decoder(groups=None, seed=0):
    torch.manual_seed(seed)
    cfg = decoder_config(
        60,
        hidden_size=16,
        num_layers=6,
        num_heads=4,
        intermediate_size=32,
        max_positions=64,
        groups=groups,
    )
    return Transformer(cfg).eval()


def test_decoder_config_shares_groups():
    assert decoder_config(50, groups=1).layer_to_block == [0] * 6
    assert decoder_config(50, groups=2).layer_to_block == [0, 0, 0, 1, 1, 1]
    assert decoder_config(50).layer_to_block == list(range(6))
    with pytest.raises(ConfigError):
        decoder_config(50, groups=7)


@pytest.mark.parametrize("n_steps", [None, 3, 2])
def test_cached_generation_matches_recomputation(n_steps):
    model = tiny_decoder(groups=1)
    plan = step_plan(model.config, n_steps) if n_steps else None
    prompt = torch.randint(1, 60, (2, 5), generator=torch.Generator().manual_seed(0))
    gen = generate(model, prompt, new_tokens=6, plan=plan)
    ids = prompt
    for _ in range(6):  # no cache: the whole sequence again each time
        nxt = model(ids, plan=plan).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    assert torch.equal(gen.ids, ids)
    assert gen.tokens_per_second > 0
    with pytest.raises(ConfigError, match="Heun"):
        generate(model, prompt, 2, plan=step_plan(model.config, 3, solver="heun"))
    with pytest.raises(ConfigError, match="Heun"):
        StepModel(model, 3, "heun")(prompt, use_cache=True)


def test_real_gpt2_checkpoint_runs_in_steps(hf_tiny_dir):
    """A (random-initialised) GPT-2 checkpoint loads by path, becomes shared and runs steps."""
    gpt2 = load_pretrained(str(hf_tiny_dir("gpt2")), head_kind="lm")
    shared = make_shared(gpt2, groups=1)
    ids = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(0))
    full = shared(ids).last_hidden_state
    fast = shared(ids, plan=step_plan(shared.config, 2)).last_hidden_state
    assert full.shape == fast.shape and not torch.allclose(full, fast)
    gen = generate(shared, ids, 3, plan=step_plan(shared.config, 2))
    assert gen.ids.shape == (2, 10)


class CharTokenizer:
    """Enough of a tokenizer for lm_blocks: one id per character."""

    sep_token_id = 1
    eos_token_id = None

    def __call__(self, text, add_special_tokens=False, verbose=True):
        return {"input_ids": [2 + (ord(c) % 50) for c in text]}


def test_lm_blocks_and_perplexity():
    blocks = lm_blocks(CharTokenizer(), ["hello world", "", "step sizes"] * 10, block_size=8)
    assert all(len(b["input_ids"]) == 8 and b["labels"] == b["input_ids"] for b in blocks)
    assert len(blocks) == (len("hello world") + 1 + len("step sizes") + 1) * 10 // 8
    assert len(lm_blocks(CharTokenizer(), ["abcdefgh"] * 10, block_size=8, limit=3)) == 3
    model = tiny_decoder()
    b = collate_blocks(blocks[:4])
    loss = model(b["input_ids"], b["attention_mask"], labels=b["labels"]).loss
    assert perplexity(model, blocks[:4], batch_size=3) == pytest.approx(
        math.exp(float(loss.detach())), rel=1e-4
    )
    with pytest.raises(Exception, match="fewer than one block"):
        lm_blocks(CharTokenizer(), ["ab"], block_size=8)


def test_step_aware_loss_draws_from_the_set():
    model = tiny_decoder(groups=1)
    b = collate_blocks(lm_blocks(CharTokenizer(), ["some text here"] * 20, block_size=8)[:4])
    plain = model(b["input_ids"], b["attention_mask"], labels=b["labels"]).loss
    assert torch.equal(step_aware_loss([1])(model, b)[0], plain)
    torch.manual_seed(0)
    fn = step_aware_loss([1, 2, 3])
    drawn = {fn(model, b)[1]["a"] for _ in range(30)}
    assert drawn == {1.0, 2.0, 3.0}
    at2 = model(
        b["input_ids"],
        b["attention_mask"],
        labels=b["labels"],
        plan=ForwardPlan(steps=steps_for_size(model.config, 2.0)),
    ).loss
    torch.manual_seed(0)
    losses = {fn(model, b)[1]["a"]: fn for _ in range(1)}
    assert losses  # the draw is reproducible from torch's RNG
    torch.manual_seed(0)
    a1 = fn(model, b)
    torch.manual_seed(0)
    a2 = fn(model, b)
    assert a1[1] == a2[1] and torch.equal(a1[0], a2[0])
    assert not torch.equal(at2, plain)


def test_group_step_sizes_make_the_mixed_plans_inference_uses():
    cfg = tiny(groups=2).config  # two groups of three layers
    sizes = lambda steps: [st.step_size for st in steps]  # noqa: E731
    mixed = steps_for_group_sizes(cfg, (1.5, 3.0))
    assert sizes(mixed) == [1.5, 1.5, 3.0] == sizes(step_plan(cfg, 3).steps)
    assert [st.block for st in mixed] == [0, 0, 1]
    for a in (1.0, 1.5, 2.0, 3.0):  # equal sizes: exactly the one-draw steps
        assert steps_for_group_sizes(cfg, (a, a)) == steps_for_size(cfg, a)
    with pytest.raises(ConfigError, match="3 step sizes for 2 groups"):
        steps_for_group_sizes(cfg, (1.0, 2.0, 3.0))


def test_per_group_draws_mix_sizes_and_leave_one_group_unchanged():
    two = tiny(groups=2).config
    torch.manual_seed(0)
    one_draw = {draw_group_sizes(two, [1, 1.5, 3]) for _ in range(40)}
    assert all(len(set(d)) == 1 for d in one_draw)  # one size for the whole model
    torch.manual_seed(0)
    per_group = {draw_group_sizes(two, [1, 1.5, 3], per_group=True) for _ in range(40)}
    assert any(len(set(d)) == 2 for d in per_group) and len(per_group) == 9  # every pair
    # with one group the two rules are the same draw: same sizes, same RNG use after
    full = tiny(groups=1).config
    got = []
    for per in (False, True):
        torch.manual_seed(3)
        got.append(([draw_group_sizes(full, [1, 2, 3], per) for _ in range(10)], torch.rand(1)))
    assert got[0][0] == got[1][0] and torch.equal(got[0][1], got[1][1])


def test_per_group_step_aware_training_runs_mixed_plans():
    teacher = tiny(seed=3)
    student = make_shared(teacher, groups=2)
    module = ShareDistillation(student, teacher, (1.0, 3.0), layerwise=True, per_group=True)
    ids, mask = batch()
    torch.manual_seed(0)
    logged = [module({"input_ids": ids, "attention_mask": mask})[1]["a"] for _ in range(12)]
    assert 2.0 in logged  # (1, 3) or (3, 1): the mean step size is logged
    assert {(1.0, 3.0), (3.0, 1.0)} <= set(module._plans)
    model = tiny_decoder(groups=2)
    b = collate_blocks(lm_blocks(CharTokenizer(), ["some text here"] * 20, block_size=8)[:4])
    fn = step_aware_loss([1, 3], per_group=True)
    torch.manual_seed(0)
    drawn = {fn(model, b)[1]["a"] for _ in range(12)}
    assert drawn == {1.0, 2.0, 3.0}


# ---------------------------------------------------------------------- making shared models
def test_make_shared_inits_and_checks():
    teacher = tiny()
    mean = make_shared(teacher, groups=2, init="mean")
    assert mean.config.layer_to_block == [0, 0, 0, 1, 1, 1] and len(mean.blocks) == 2
    w = [teacher.blocks[i].attn.q.weight for i in range(3)]
    assert torch.allclose(mean.blocks[0].attn.q.weight, sum(w) / 3)
    first = make_shared(teacher, groups=2, init="first")
    assert torch.equal(first.blocks[1].ffn.inp.weight, teacher.blocks[3].ffn.inp.weight)
    middle = make_shared(teacher, groups=1, init="middle")
    assert torch.equal(middle.blocks[0].ffn.out.weight, teacher.blocks[2].ffn.out.weight)
    assert torch.equal(mean.embeddings.word.weight, teacher.embeddings.word.weight)
    assert torch.equal(mean.head.out.weight, teacher.head.out.weight)
    same = make_shared(teacher, groups=6)
    ids, mask = batch()
    assert torch.equal(same(ids, mask).logits, teacher(ids, mask).logits)
    with pytest.raises(ConfigError, match="already shares"):
        make_shared(mean)
    with pytest.raises(ConfigError, match="init"):
        make_shared(teacher, init="median")
    with pytest.raises(ConfigError, match="groups"):
        make_shared(teacher, groups=0)
    pruned = tiny()
    pruned.config.blocks[1] = BlockShape(2, 32)
    with pytest.raises(ConfigError, match="different widths"):
        make_shared(pruned, groups=1)


def test_shared_model_round_trips(tmp_path):
    shared = make_shared(tiny(), groups=2)
    save_model(shared, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert back.config.layer_to_block == [0, 0, 0, 1, 1, 1]
    ids, mask = batch()
    plan = step_plan(shared.config, 4)
    assert torch.equal(back(ids, mask, plan=plan).logits, shared(ids, mask, plan=plan).logits)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_per_layer_norms_share_only_attention_and_ffn(norm, tmp_path):
    teacher = tiny(norm=norm)
    ids, mask = batch()
    # every layer keeps its own LayerNorms, copied exactly; unshared, nothing changes
    same = make_shared(teacher, groups=6, layer_norms=True)
    assert same.config.layer_norms and not hasattr(same.blocks[0], "attn_norm")
    assert torch.equal(same(ids, mask).logits, teacher(ids, mask).logits)
    shared = make_shared(teacher, groups=1, init="first", layer_norms=True)
    for i in range(6):
        assert torch.equal(shared.norms[i].ffn_norm.weight, teacher.blocks[i].ffn_norm.weight)
    # the reference: the teacher with block 0's attention and FFN in every layer, own norms
    ref = tiny(norm=norm)
    ref.load_state_dict(teacher.state_dict())
    for i in range(1, 6):
        ref.blocks[i].attn.load_state_dict(teacher.blocks[0].attn.state_dict())
        ref.blocks[i].ffn.load_state_dict(teacher.blocks[0].ffn.state_dict())
    assert torch.allclose(shared(ids, mask).logits, ref(ids, mask).logits, atol=TOL)
    # a larger step uses the norms of the layer at its start (where Euler evaluates f)
    for sizes in ([2.0, 2.0, 2.0], [1.5, 1.5, 3.0]):
        got = shared(ids, mask, plan=step_plan(shared.config, sizes=sizes)).logits
        want = ref(ids, mask, plan=ForwardPlan(steps=steps_from_sizes(list(range(6)), sizes)))
        assert torch.allclose(got, want.logits, atol=TOL), sizes
    starts = [s.start_layer for s in steps_from_sizes([0] * 6, [1.5, 1.5, 3.0])]
    assert starts == [0, 1, 3]
    # saved and reloaded in that form
    save_model(shared, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert back.config.layer_norms
    plan = step_plan(shared.config, 3)
    assert torch.equal(back(ids, mask, plan=plan).logits, shared(ids, mask, plan=plan).logits)
    # and shared again (a source with per-layer norms keeps them)
    again = make_shared(same, groups=2)
    assert again.config.layer_norms
    assert torch.equal(again.norms[4].attn_norm.bias, teacher.blocks[4].attn_norm.bias)


def text_features(n: int = 48, length: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(1, 60, (length,), generator=g).tolist(),
            "attention_mask": [1] * length,
        }
        for _ in range(n)
    ]


def collate(features):
    return {k: torch.tensor([f[k] for f in features]) for k in ("input_ids", "attention_mask")}


class CrashAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, step):
        if step == self.step:
            raise KeyboardInterrupt


def distil(tmp_path, name, sizes=(1.0, 2.0, 3.0), layerwise=True, resume=False, crash=None):
    teacher = tiny(seed=3)
    student = make_shared(teacher, groups=1)
    cfg = TrainConfig(
        output_dir=str(tmp_path / name),
        max_steps=8,
        batch_size=8,
        learning_rate=3e-3,
        save_every=3,
        seed=7,
        progress=False,
        log_every=1,
    )
    res = distil_shared(
        student,
        teacher,
        text_features(),
        collate,
        cfg,
        step_sizes=sizes,
        layerwise=layerwise,
        resume=resume,
        callbacks=[CrashAt(crash)] if crash else (),
    )
    return student, res


def test_distillation_learns_and_leaves_the_teacher(tmp_path):
    teacher = tiny(seed=3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = make_shared(teacher, groups=1)
    ids = torch.tensor([f["input_ids"] for f in text_features(16, seed=9)])

    def gap(a):
        plan = ForwardPlan(steps=steps_for_size(student.config, a))
        with torch.no_grad():
            return float(
                (
                    (student(ids, plan=plan).last_hidden_state - teacher(ids).last_hidden_state)
                    ** 2
                ).mean()
            )

    held_out = [collate(text_features(16, seed=9))]
    fidelity = held_out_fidelity(held_out)
    start = {a: gap(a) for a in (1.0, 2.0)}
    before_cos = fidelity(ShareDistillation(student, teacher))
    cfg = TrainConfig(
        output_dir=str(tmp_path / "d"),
        max_steps=40,
        batch_size=8,
        learning_rate=3e-3,
        save_every=0,
        eval_every=20,
        seed=7,
        progress=False,
        log_every=1,
    )
    res = distil_shared(
        student,
        teacher,
        text_features(),
        collate,
        cfg,
        step_sizes=(1.0, 2.0),
        layerwise=True,
        eval_batches=held_out,
    )
    student.eval()
    assert all(gap(a) < 0.7 * start[a] for a in (1.0, 2.0)), (start, {a: gap(a) for a in (1, 2)})
    # held-out fidelity is logged during distillation, at a = 1 and 2, and it improved
    evals = [r for r in res.history if r.get("kind") == "eval"]
    assert [r["step"] for r in evals] == [20, 40]
    for a in ("a1", "a2"):
        assert evals[-1][f"cos_{a}"] > before_cos[f"cos_{a}"]
        assert evals[-1][f"mse_{a}"] < before_cos[f"mse_{a}"]
    assert evals[-1]["mse_a1"] == pytest.approx(gap(1.0), rel=1e-4)  # no padding here
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    drawn = {r.get("a") for r in res.history if r.get("kind") == "train"}
    assert drawn - {None}  # the step size is logged
    saved = load_model(res.model_dir)
    assert saved.config.layer_to_block == [0] * 6
    assert torch.equal(saved(ids).last_hidden_state, student(ids).last_hidden_state)


def test_step_aware_distillation_resumes_exactly(tmp_path):
    straight, _ = distil(tmp_path, "a")
    with pytest.raises(KeyboardInterrupt):
        distil(tmp_path, "b", crash=5)  # the last checkpoint is step 3
    resumed, _ = distil(tmp_path, "b", resume=True)
    for (k, v), w in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(v, w, atol=1e-6), k


def test_tokenizer_and_init_for_training_from_scratch():
    from gearshift.methods.steps import init_weights, train_tokenizer

    texts = ["the shared block runs in steps", "fewer larger steps cost less"] * 20
    tok = train_tokenizer(texts, vocab_size=300)
    ids = tok("the shared steps", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "the shared steps"
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert 256 < tok.vocab_size <= 300
    torch.manual_seed(0)
    model = init_weights(
        Transformer(
            decoder_config(
                tok.vocab_size, hidden_size=32, num_heads=4, intermediate_size=64, groups=1
            )
        )
    )
    b = collate_blocks(lm_blocks(tok, texts, block_size=8)[:4])
    loss = float(model(b["input_ids"], b["attention_mask"], labels=b["labels"]).loss.detach())
    assert abs(loss - math.log(tok.vocab_size)) < 0.5  # a uniform guess at the start
    assert float(model.blocks[0].attn.o.weight.detach().std()) < 0.02 / math.sqrt(12) * 1.2


def test_step_model_deep_copies_keep_their_own_setting():
    import copy

    sm = StepModel(tiny(groups=1), n_steps=3)
    sm.use_steps(2)
    twin = copy.deepcopy(sm)
    assert twin.setting == (3, "euler") and sm.setting == (2, "euler")


def test_block_parameter_order_is_stable():
    # optimizer checkpoints match parameters by position: the order must not drift
    names = [n for n, _ in tiny(layers=1).blocks[0].named_parameters()]
    assert [n.rsplit(".", 1)[0] for n in names][::2] == [
        "attn.q",
        "attn.k",
        "attn.v",
        "attn.o",
        "attn_norm",
        "ffn.inp",
        "ffn.out",
        "ffn_norm",
    ]
    shared = make_shared(tiny(), groups=1, layer_norms=True)
    names = [n for n, _ in shared.named_parameters()]
    assert not [n for n in names if n.startswith("blocks.") and "norm" in n]
    assert names.index("norms.0.attn_norm.weight") > names.index("blocks.0.ffn.out.bias")

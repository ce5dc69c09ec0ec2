"""The shared composition harness: every family x every method x the pairs and triples.

One list of cases (PEFT-style): each builds a tiny random model of a family, applies its
model edits, attaches its plan providers and runs the same checks:

- it runs and gives logits of the right shape;
- where it must, it equals the unwrapped model (providers off; N = L steps; an exit
  threshold that exits nothing);
- save -> reload (one stack folder) gives identical outputs at every setting;
- FLOPs counted on the real forward pass equal the closed-form count of what runs;
- an invalid pair is refused with a message naming both methods.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field

import pytest
import torch

from gearshift.compose import Stack, load_stack, save_stack
from gearshift.compose.flops import stack_flops
from gearshift.errors import ConfigError
from gearshift.measure.flops import analytic_flops, count_flops
from gearshift.methods.plugins import Plugin, PluginConfig
from gearshift.methods.plugins.model import Plugins
from gearshift.methods.slim.criteria import Entropy, Patience
from gearshift.methods.slim.model import Exits, MultiExitModel
from gearshift.methods.steps.model import StepModel, Steps, step_plan
from gearshift.runtime import ForwardPlan, ModelConfig, Transformer, load_model, load_pretrained
from gearshift.runtime.io import load_pretrained as runtime_load_pretrained

FAMILIES = ["bert", "roberta", "albert", "distilbert", "gpt2"]


# ---------------------------------------------------------------------- building blocks
def randomize(module: torch.nn.Module, seed: int = 1, scale: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def family_model(hf_tiny_dir, family: str) -> Transformer:
    model = load_pretrained(str(hf_tiny_dir(family, "classification")))
    return model.eval()


def shared_bert(groups: int = 1, layers: int = 6, seed: int = 0) -> Transformer:
    """A parameter-shared encoder (the steps method's models): ``groups`` shared blocks."""
    torch.manual_seed(seed)
    cfg = ModelConfig.uniform(
        family="bert",
        vocab_size=60,
        num_layers=layers,
        num_heads=4,
        intermediate_size=40,
        hidden_size=32,
        shared_groups=groups,
        type_vocab_size=2,
        layer_norms=True,
        head={"kind": "classification", "num_labels": 3},
    )
    model = Transformer(cfg).eval()
    with torch.no_grad():  # larger weights so that step sizes change the output visibly
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    return model


def unpadded(family: str, batch: int = 3, n: int = 10, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 50, (batch, n), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones(batch, n, dtype=torch.long)}
    if family in ("bert", "albert"):
        out["token_type_ids"] = torch.zeros_like(ids)
    return out


def padded(family: str, batch: int = 4, n: int = 11, seed: int = 3):
    b = unpadded(family, batch, n, seed)
    pad = {"roberta": 1, "gpt2": 98}.get(family, 0)
    for row in range(1, batch):
        cut = n - 2 * row
        b["input_ids"][row, cut:] = pad
        b["attention_mask"][row, cut:] = 0
    return b


def factorize_svd(model: Transformer, ratio: float = 2.0) -> Transformer:
    from gearshift.methods.factorize.compress import compress
    from gearshift.methods.factorize.config import FactorizeConfig

    out, _ = compress(
        copy.deepcopy(model), FactorizeConfig(method="svd", ratio=ratio, progress=False), None
    )
    return out.eval()


def slim_widths(model: Transformer) -> Transformer:
    """Keep half the heads (rounded up) and 3/4 of the FFN neurons of every layer."""
    from gearshift.methods.slim.prune import prune

    cfg = model.config
    heads = [list(range((cfg.layer_shape(i).num_heads + 1) // 2)) for i in range(cfg.num_layers)]
    neurons = [
        list(range(cfg.layer_shape(i).intermediate_size * 3 // 4)) for i in range(cfg.num_layers)
    ]
    return prune(model, heads, neurons).eval()


def int8(model: Transformer) -> Transformer:
    from gearshift.runtime import quantize_int8

    return quantize_int8(copy.deepcopy(model)).eval()


EDITS = {"factorize": factorize_svd, "slim": slim_widths, "int8": int8}


def plugins_for(model: Transformer, layers=None) -> Plugins:
    cfgs = {
        "k2": PluginConfig(k=2, layers=layers),
        "k3l": PluginConfig(k=3, placement="layer", layers=layers),
    }
    return Plugins(
        {name: randomize(Plugin(c, model), seed=i + 1) for i, (name, c) in enumerate(cfgs.items())}
    )


def exits_for(model: Transformer) -> Exits:
    return randomize(Exits(model.config), seed=7, scale=1.0)


# ---------------------------------------------------------------------- the cases
@dataclass
class Case:
    """Edits applied in order, then providers attached; settings to check."""

    name: str
    family: str
    edits: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    shared: bool = False  # a parameter-shared model (steps)
    settings: list[dict] = field(default_factory=list)


def _settings(providers: list[str], regression: bool = False) -> list[dict]:
    crit = Patience(1, tolerance=10.0) if regression else Entropy(0.9)
    parts = {
        "plugins": [{"plugins": "k2"}, {"plugins": "k3l"}],
        "exits": [{"exits": crit}],
        "steps": [{"steps": 3}, {"steps": "2:heun"}],
    }
    out: list[dict] = [{}]
    for p in providers:
        out = [dict(a, **b) for a in out for b in [{}] + parts[p]]
    return out


def cases() -> list[Case]:
    out = []
    for fam in FAMILIES:
        encoder = fam != "gpt2"
        # ALBERT shares its layers: structured pruning (slim) is refused there (tested below)
        singles = [[]] + [[e] for e in EDITS if not (fam == "albert" and e == "slim")]
        for edits in singles:
            for providers in ([], ["plugins"], ["exits"], ["plugins", "exits"]):
                if "plugins" in providers and not encoder:
                    continue
                if not edits and not providers:
                    continue
                out.append(Case(f"{fam}-{'+'.join(edits + providers)}", fam, edits, providers))
        # the triples that matter
        if encoder:
            out.append(
                Case(f"{fam}-factorize+plugins+exits", fam, ["factorize"], ["plugins", "exits"])
            )
            if fam != "albert":
                out.append(Case(f"{fam}-slim+plugins+int8", fam, ["slim", "int8"], ["plugins"]))
            out.append(Case(f"{fam}-factorize+int8", fam, ["factorize", "int8"], []))
    out.append(Case("shared-steps", "bert", [], ["steps"], shared=True))
    out.append(Case("shared-steps+exits", "bert", [], ["steps", "exits"], shared=True))
    out.append(
        Case("shared-steps+plugins+exits", "bert", [], ["plugins", "steps", "exits"], shared=True)
    )
    out.append(
        Case("shared-factorize+steps+exits", "bert", ["factorize"], ["steps", "exits"], shared=True)
    )
    out.append(Case("shared-int8+steps", "bert", ["int8"], ["steps"], shared=True))
    for c in out:
        c.settings = _settings(c.providers)
    return out


CASES = cases()


def build(case: Case, hf_tiny_dir) -> tuple[Transformer, Stack]:
    # one shared block: 3 steps of 2 start at layers 0, 2, 4 (where its plugins sit);
    # two blocks of 3 layers elsewhere, so steps are planned per group
    groups = 1 if "plugins" in case.providers else 2
    base = shared_bert(groups=groups) if case.shared else family_model(hf_tiny_dir, case.family)
    for edit in case.edits:
        base = EDITS[edit](base)
    stack = Stack(base)
    for p in case.providers:
        if p == "plugins":
            # on a shared model run in steps, plugins sit on the layers the steps start at
            layers = [0, 2, 4] if case.shared else None
            stack.attach(plugins_for(base, layers))
        elif p == "exits":
            stack.attach(exits_for(base))
        elif p == "steps":
            stack.attach(Steps([3, 2]))
    return base, stack


def _valid(case: Case, setting: dict) -> bool:
    # plugins on layers 0, 2, 4 run under 3 steps of 2 (starts 0, 2, 4) and the own loop;
    # 2 steps of 3 start at 0 and 3: refused (tested separately)
    if case.shared and setting.get("plugins") and str(setting.get("steps", "")).startswith("2"):
        return False
    return True


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_stack_case(case: Case, hf_tiny_dir, tmp_path):
    base, stack = build(case, hf_tiny_dir)
    batch = padded(case.family)
    ref = base(**batch).logits
    # providers off: exactly the edited model
    assert torch.equal(stack(**batch).logits, ref)
    outputs = {}
    for setting in case.settings:
        if not _valid(case, setting):
            continue
        out = stack(**batch, setting=setting)
        assert out.logits.shape == ref.shape, setting
        assert torch.isfinite(out.logits).all(), setting
        outputs[stack.describe(setting)] = (setting, out.logits)
    # identity where it must be
    if "exits" in case.providers:
        never = {"exits": Entropy(-1.0)}  # entropy is never below -1: nothing exits
        assert torch.equal(stack(**batch, setting=never).logits, ref)
    if "steps" in case.providers:
        assert torch.equal(stack(**batch, setting={"steps": case_layers(base)}).logits, ref)

    # save -> reload: identical outputs at every setting
    save_stack(stack, tmp_path / "stack")
    again = load_stack(tmp_path / "stack")
    assert list(again.providers) == list(stack.providers)
    assert torch.equal(again(**batch).logits, ref)
    for label, (setting, logits) in outputs.items():
        assert torch.equal(again(**batch, setting=setting).logits, logits), label
    # and through the generic loaders
    assert torch.equal(load_model(tmp_path / "stack")(**batch).logits, ref)
    assert torch.equal(runtime_load_pretrained(str(tmp_path / "stack"))(**batch).logits, ref)

    # FLOPs: counted on the real pass == closed form of what runs
    flat = unpadded(case.family)
    n = flat["input_ids"].shape[1]
    B = flat["input_ids"].shape[0]
    for setting in [{}] + [s for s, _ in outputs.values()]:
        with stack.using(setting):
            counted = count_flops(stack, flat)
            exit_step = stack(**flat).exit_step
        if exit_step is None:
            expected = B * stack_flops(stack, n, setting)
        else:
            expected = sum(stack_flops(stack, n, setting, exit_after=int(i)) for i in exit_step)
        assert counted == expected, (stack.describe(setting), counted, expected)
    if not case.providers:
        assert stack_flops(stack, n, {}) == analytic_flops(base.config, n)


def case_layers(model: Transformer) -> int:
    return model.config.num_layers


# ---------------------------------------------------------------------- the rules
def test_early_exit_leaves_rows_and_matches_rows_run_alone(hf_tiny_dir):
    base = family_model(hf_tiny_dir, "bert")
    stack = Stack(base, {"exits": exits_for(base)})
    batch = padded("bert")
    crit = Entropy(1.08)  # 3 classes: max entropy 1.0986; most rows leave somewhere
    out = stack(**batch, setting={"exits": crit})
    assert 0 < int((out.exit_step < base.config.num_layers - 1).sum())
    for row in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][row].sum())
        alone = {k: v[row : row + 1, :n] for k, v in batch.items()}
        single = stack(**alone, setting={"exits": crit})
        torch.testing.assert_close(single.logits[0], out.logits[row], atol=1e-5, rtol=1e-4)
        assert int(single.exit_step[0]) == int(out.exit_step[row])


def test_heun_under_exits_is_heun_not_euler():
    base = shared_bert(groups=1)
    stack = Stack(base, {"steps": Steps(), "exits": exits_for(base)})
    batch = unpadded("bert")
    never = Entropy(-1.0)
    heun = stack(**batch, setting={"steps": "3:heun", "exits": never}).logits
    euler = stack(**batch, setting={"steps": 3, "exits": never}).logits
    assert not torch.allclose(heun, euler)
    assert torch.equal(heun, base(**batch, plan=step_plan(base.config, 3, solver="heun")).logits)


def test_exit_after_a_step_of_a_shared_model():
    base = shared_bert(groups=1)
    exits = exits_for(base)
    stack = Stack(base, {"steps": Steps(), "exits": exits})
    seen = []

    class Spy(Entropy):
        def decide(self, layer, logits, rows, state):
            seen.append(layer)
            return super().decide(layer, logits, rows, state)

    stack(**unpadded("bert"), setting={"steps": 3, "exits": Spy(-1.0)})
    assert seen == [1, 3]  # after the steps ending at layers 1 and 3, not after the last


def test_wraps_key_on_the_block_that_runs():
    """On a shared model in 3 steps of 2, the blocks of layers 0, 2 and 4 run: a plugin on
    those layers is applied there, and one on a skipped layer is refused, never lost."""
    base = shared_bert(groups=1)
    called = []

    def spy(layer):
        def wrap(ffn_fn, x, keep):
            called.append(layer)
            return ffn_fn(x)

        return wrap

    plan = ForwardPlan(ffn_wrap={i: spy(i) for i in (0, 2, 4)}, provider="spy")
    merged = ForwardPlan.merge(step_plan(base.config, 3), plan)
    base(**unpadded("bert"), plan=merged)
    assert called == [0, 2, 4]
    lost = ForwardPlan(ffn_wrap={i: spy(i) for i in range(6)}, provider="plugins")
    with pytest.raises(ConfigError, match=r"plugins wraps layer\(s\) \[1, 3, 5\].*steps"):
        ForwardPlan.merge(step_plan(base.config, 3), lost)
    stack = Stack(base, {"plugins": plugins_for(base, None), "steps": Steps()})
    with pytest.raises(ConfigError, match="plugins wraps layer"):
        stack(**unpadded("bert"), setting={"plugins": "k2", "steps": 3})


def test_impossible_pairs_are_refused_naming_both(hf_tiny_dir):
    gpt2 = family_model(hf_tiny_dir, "gpt2")
    with pytest.raises(ConfigError, match="causal gpt2 model.*plugins"):
        Stack(gpt2, {"plugins": Plugins()})
    bert = family_model(hf_tiny_dir, "bert")
    stack = Stack(bert, {"exits": exits_for(bert)})
    with pytest.raises(ConfigError, match="exits and exits2 both apply the task head"):
        stack.attach(exits_for(bert), "exits2")
    a = ForwardPlan(steps=bert.steps, provider="steps")
    b = ForwardPlan(steps=bert.steps, provider="other")
    with pytest.raises(ConfigError, match="steps and other both set the layer loop"):
        ForwardPlan.merge(a, b)
    with pytest.raises(ConfigError, match="p1 and p2 both give an exit criterion"):
        ForwardPlan.merge(
            ForwardPlan(exit=lambda *a: None, provider="p1"),
            ForwardPlan(exit=lambda *a: None, provider="p2"),
        )
    wrap = lambda f, x, keep: f(x)  # noqa: E731
    with pytest.raises(ConfigError, match="k4 and k2 both wrap layer 0"):
        ForwardPlan.merge(
            ForwardPlan(ffn_wrap={0: wrap}, provider="k4"),
            ForwardPlan(ffn_wrap={0: wrap}, provider="k2"),
        )
    assert ForwardPlan.merge(ForwardPlan(run_head=False), ForwardPlan()).run_head is False
    with pytest.raises(ConfigError, match="no provider named 'plugins'"):
        stack(**unpadded("bert"), setting={"plugins": "k4"})
    with pytest.raises(ConfigError, match="exit criterion 'fast'"):
        stack(**unpadded("bert"), setting={"exits": "fast"})
    with pytest.raises(ConfigError, match="steps setting"):
        Stack(shared_bert(), {"steps": Steps()}).use(steps="many")
    with pytest.raises(ConfigError, match="nesting stacks"):
        Stack(stack)
    # model edit x model edit: slim's structured pruning on a parameter-shared model
    with pytest.raises(ConfigError, match="structured pruning needs unshared layers"):
        slim_widths(family_model(hf_tiny_dir, "albert"))


def test_adapters_refuse_a_base_they_do_not_fit(hf_tiny_dir, tmp_path):
    bert = family_model(hf_tiny_dir, "bert")
    stack = Stack(bert, {"plugins": plugins_for(bert), "exits": exits_for(bert)})
    save_stack(stack, tmp_path / "s")
    other = shared_bert()  # 6 layers, not 3
    from gearshift.errors import ArtifactError

    with pytest.raises(ArtifactError, match="layers: plugin expects 3, base model has 6"):
        Plugins.from_pretrained(tmp_path / "s" / "plugins", other)
    with pytest.raises(ArtifactError, match="num_layers: exits expect 3, base has 6"):
        Exits.from_pretrained(tmp_path / "s" / "exits", other)


def test_linked_base_is_checked_by_checksum(hf_tiny_dir, tmp_path):
    from gearshift.errors import ArtifactError
    from gearshift.runtime import save_model

    bert = family_model(hf_tiny_dir, "bert")
    save_model(bert, tmp_path / "base")
    stack = Stack(bert, {"exits": exits_for(bert)})
    save_stack(stack, tmp_path / "s", link_base=tmp_path / "base")
    assert not (tmp_path / "s" / "base").exists()
    batch = padded("bert")
    assert torch.equal(load_stack(tmp_path / "s")(**batch).logits, bert(**batch).logits)
    changed = copy.deepcopy(bert)
    with torch.no_grad():
        changed.head.out.weight.add_(1.0)
    save_model(changed, tmp_path / "base")
    with pytest.raises(ArtifactError, match="changed since the stack was built"):
        load_stack(tmp_path / "s")


def test_settings_switch_per_thread_on_one_model(hf_tiny_dir):
    bert = family_model(hf_tiny_dir, "bert")
    stack = Stack(bert, {"plugins": plugins_for(bert), "exits": exits_for(bert)})
    batch = padded("bert")
    settings = [{}, {"plugins": "k2"}, {"plugins": "k3l", "exits": "entropy:1.08"}]
    refs = [stack(**batch, setting=s).logits for s in settings]
    errors = []

    def serve(i: int) -> None:
        stack.use(settings[i])
        for _ in range(10):
            if not torch.equal(stack(**batch).logits, refs[i]):
                errors.append(i)

    threads = [threading.Thread(target=serve, args=(i % 3,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert stack.active_setting == {}  # this thread never chose
    assert set(stack.settings()) == {"full", "plugins=k2", "plugins=k3l"}


def test_the_old_wrappers_are_stacks(hf_tiny_dir):
    from gearshift.methods.plugins import PluginModel

    bert = family_model(hf_tiny_dir, "bert")
    pm = PluginModel(copy.deepcopy(bert))
    pm.add_plugin("k2", randomize(Plugin(PluginConfig(k=2), bert)))
    batch = padded("bert")
    with pm.plugin("k2"):
        a = pm(**batch).logits
    assert torch.equal(a, pm(**batch, setting={"plugins": "k2"}).logits)
    assert isinstance(pm, Stack) and isinstance(StepModel(shared_bert()), Stack)
    assert isinstance(MultiExitModel(bert), Stack)


def test_stack_verb_builds_one_folder_that_loads_everywhere(hf_tiny_dir, tmp_path, capsys):
    """`gearshift stack` = build_stack: factorize + int8 edits, a plugin and exits attached,
    a default setting; gearshift.load and load_model give identical outputs."""
    import json as _json

    import gearshift
    from gearshift.cli import main
    from gearshift.runtime import save_model

    bert = family_model(hf_tiny_dir, "bert")
    save_model(bert, tmp_path / "base")
    randomize(Plugin(PluginConfig(k=2), bert)).save_pretrained(tmp_path / "k2")
    exits_for(bert).save_pretrained(tmp_path / "ex", bert.config)
    argv = ["stack", "--model", str(tmp_path / "base"), "--output", str(tmp_path / "S")]
    argv += ["--factorize", "svd:2", "--int8", "--plugin", f"fast={tmp_path / 'k2'}"]
    argv += ["--exits", str(tmp_path / "ex"), "--default", "plugins=fast", "exits=entropy:1.0"]
    assert main(argv) == 0
    summary = _json.loads(capsys.readouterr().out)
    assert summary["parts"] == "svd:2 + plugin k2 + exits + int8"
    assert set(summary["operating_points"]) == {"full", "plugins=fast"}
    stack = gearshift.load(tmp_path / "S")
    assert isinstance(stack, Stack) and list(stack.providers) == ["plugins", "exits"]
    assert stack.default_setting["plugins"] == "fast"
    # the same stack built by hand
    edited = int8(factorize_svd(bert))
    by_hand = Stack(edited)
    by_hand.attach(Plugins({"fast": Plugin.from_pretrained(tmp_path / "k2", edited)}))
    by_hand.attach(Exits.from_pretrained(tmp_path / "ex", edited))
    batch = padded("bert")
    for setting in ({}, {"plugins": "fast"}, {"plugins": "fast", "exits": "entropy:1.0"}):
        a = stack(**batch, setting=setting).logits
        assert torch.equal(a, by_hand(**batch, setting=setting).logits), setting
        assert torch.equal(a, load_model(tmp_path / "S")(**batch, setting=setting).logits)
    assert torch.equal(
        stack(**batch).logits, by_hand(**batch, setting=stack.default_setting).logits
    )
    assert main(argv) == 2  # the CLI prints the error and exits 2
    assert "exists already: pass --overwrite" in capsys.readouterr().err


def test_multi_exit_folder_of_a_factorized_base_with_a_shared_basis(hf_tiny_dir, tmp_path):
    """A slim multi-exit folder stores a shared basis once and reloads identical logits."""
    from gearshift.methods.factorize.compress import compress
    from gearshift.methods.factorize.config import FactorizeConfig
    from gearshift.methods.slim.model import load_multi_exit

    bert = family_model(hf_tiny_dir, "bert")
    cfg = FactorizeConfig(
        method="svd", ratio=2.0, grouped=True, group_modules=["attn.k"], progress=False
    )
    shared, _ = compress(copy.deepcopy(bert), cfg, None)
    from gearshift.runtime.edits import unique_state

    assert len(unique_state(shared)) < len(shared.state_dict())  # the basis is shared
    model = MultiExitModel(shared)
    randomize(model.exits, seed=4, scale=1.0)
    model.save_pretrained(tmp_path / "me")
    again = load_multi_exit(tmp_path / "me")
    batch = padded("bert")
    for crit in (None, Entropy(1.08)):
        a = model(**batch, criterion=crit).logits
        assert torch.equal(a, again(**batch, criterion=crit).logits)


def test_setting_flag_picks_a_stack_operating_point(hf_tiny_dir):
    """--setting on evaluate / predict / profile: the stack's default for the run."""
    import argparse

    from gearshift.cli import _apply_setting, build_parser
    from gearshift.errors import GearshiftError

    bert = family_model(hf_tiny_dir, "bert")
    stack = Stack(bert, {"plugins": plugins_for(bert), "exits": exits_for(bert)})
    stack.default_setting = {"plugins": "k2"}
    args = argparse.Namespace(model="S", setting=["exits=entropy:1.0", "plugins=none"])
    _apply_setting(stack, args)
    assert stack.default_setting["plugins"] is None
    assert stack.default_setting["exits"].spec == "entropy:1"
    with pytest.raises(GearshiftError, match="--setting needs a stack"):
        _apply_setting(bert, args)
    for verb in ("evaluate", "predict", "profile"):
        argv = [verb, "--model", "S", "--setting", "plugins=k2"]
        if verb == "predict":
            argv += ["--input", "x.txt"]
        assert build_parser(argv).parse_args(argv).setting == ["plugins=k2"]

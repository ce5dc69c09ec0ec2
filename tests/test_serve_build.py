"""`gearshift gears build`: measured gear tables over a teacher, its plugins and an exits
folder, on real SST-2 dev sentences."""

from __future__ import annotations

import json

import pytest

from gearshift.cli import main
from gearshift.serve.table import read_gear_table
from gearshift.serve.testing import make_tiny_gears


def test_gears_build_measures_every_gear(tmp_path):
    import torch

    from gearshift.data import get_task
    from gearshift.jobs import TaskData, evaluate
    from gearshift.methods.plugins import PluginModel
    from gearshift.methods.slim.model import MultiExitModel, save_multi_exit
    from gearshift.runtime import load_pretrained, load_tokenizer

    make_tiny_gears(tmp_path)
    model_dir, plugin_dir = tmp_path / "model", tmp_path / "k2"
    base = load_pretrained(str(model_dir))
    torch.manual_seed(0)
    save_multi_exit(MultiExitModel(load_pretrained(str(model_dir))), tmp_path / "exits")
    out = tmp_path / "table.json"
    code = main(
        [
            "gears",
            "build",
            "--model",
            str(model_dir),
            "--task",
            "sst2",
            "--plugin",
            f"k2={plugin_dir}",
            "--exits",
            f"early={tmp_path / 'exits'}",
            "--exit-thresholds",
            "0.3",
            "--dev-limit",
            "24",
            "--repeats",
            "2",
            "--batch-sizes",
            "1",
            "8",
        ]
        + ["--output", str(out)]
    )
    assert code == 0
    table = read_gear_table(out)
    assert sorted(table.names) == ["early-0.3", "full", "k2"]
    assert table.task.name == "sst2" and table.task.label_names == ["negative", "positive"]
    assert table.models["base"].plugins == {"k2": str(plugin_dir.resolve())}
    for g in table.gears:
        assert set(g.latency_ms) == {1, 8} and all(v > 0 for v in g.latency_ms.values())
        assert 0 <= g.score <= 100
    assert table.gear("early-0.3").setting == {"exits": "entropy:0.3"}
    raw = json.loads(out.read_text())
    assert raw["dev_examples"] == 24 and raw["command"].startswith("gearshift")
    # the scores are the gears' own dev accuracy
    task = get_task("sst2")
    data = TaskData.load(task, load_tokenizer(str(model_dir)), "dev", 24)
    assert table.gear("full").score == pytest.approx(evaluate(base, data)["accuracy"])
    pm = PluginModel(base)
    pm.load_plugin("k2", plugin_dir)
    assert table.gear("k2").score == pytest.approx(evaluate(pm, data, plugin="k2")["accuracy"])


def test_gears_build_refuses_duplicate_names(tmp_path):
    from gearshift.errors import ConfigError
    from gearshift.serve.build import plan_gears

    with pytest.raises(ConfigError, match="appear twice"):
        plan_gears("m", plugins=["a/k2", "b/k2"])
    models, gears = plan_gears("m", plugins=["x=a/k2"], folders=["int8=q"])
    assert [g[0] for g in gears] == ["full", "x", "int8"]
    assert models["int8"].folder == "q"

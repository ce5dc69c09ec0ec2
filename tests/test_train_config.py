"""TrainConfig: round trip, unknown keys, validation."""

import dataclasses
import logging

import pytest

from gearshift.errors import ConfigError
from gearshift.train import TrainConfig


def test_round_trip(tmp_path):
    cfg = TrainConfig(output_dir="out", learning_rate=1e-3, epochs=1.5, metric_for_best="f1")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))
    assert "learning rate" in TrainConfig.help()["learning_rate"].lower()


def test_unknown_keys_dropped_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="gearshift.train"):
        cfg = TrainConfig.from_dict({"output_dir": "o", "batch_size": 4, "bogus": 1})
    assert cfg.batch_size == 4 and not hasattr(cfg, "bogus")
    assert any("bogus" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "field,value",
    [
        ("learning_rate", 0.0),
        ("batch_size", 0),
        ("grad_accum_steps", 0),
        ("warmup_ratio", 1.5),
        ("lr_schedule", "step"),
        ("mixed_precision", "fp64"),
        ("log_every", 0),
        ("epochs", 0.0),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(output_dir="o", **{field: value})


def test_missing_output_dir_and_bad_json():
    with pytest.raises(ConfigError, match="output_dir"):
        TrainConfig.from_dict({"batch_size": 2})
    with pytest.raises(ConfigError, match="JSON"):
        TrainConfig.from_json("{nope")
    assert TrainConfig(output_dir="o", epochs=0, max_steps=5).max_steps == 5

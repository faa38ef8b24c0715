"""Job specs load from YAML and TOML files into the same protobuf."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.sdk.trainer import SpecError, load_spec

YAML = """\
model_name: credit
feature_service: underwriting
label_source: {query: "SELECT 1", timeout: 30s}
split: {validation_start: 2018-03-01T00:00:00Z}
model: {family: mlp, hyperparameters: {d_hidden: 32}}
optimization: {epochs: 2}
resources: {processes: 2}
"""

TOML = """\
model_name = "credit"
feature_service = "underwriting"
[label_source]
query = "SELECT 1"
timeout = "30s"
[split]
validation_start = 2018-03-01T00:00:00Z
[model]
family = "mlp"
hyperparameters = { d_hidden = 32 }
[optimization]
epochs = 2
[resources]
processes = 2
"""


def test_yaml_and_toml_give_the_same_spec(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(YAML)
    (tmp_path / "a.toml").write_text(TOML)
    from_yaml, from_toml = load_spec(tmp_path / "a.yaml"), load_spec(tmp_path / "a.toml")
    assert from_yaml == from_toml
    assert from_yaml.split.validation_start.ToJsonString() == "2018-03-01T00:00:00Z"
    assert from_yaml.label_source.timeout.seconds == 30
    assert from_yaml.model.hyperparameters["d_hidden"] == 32


def test_unknown_fields_say_where(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("model_name: x\nepochs: 3\n")
    with pytest.raises(SpecError, match="epochs"):
        load_spec(tmp_path / "b.yaml")

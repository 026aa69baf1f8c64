"""One meaning for each config field: the settings dataclasses (d3po.config, d3po.models), the
workflow's schema, config/config.yaml and the schema's per-experiment override block must agree
on names, types and defaults, so that none of them can drift from the others."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest
import yaml

from d3po.config import SamplerSpec, TrainingSpec
from d3po.methods import method_classes
from d3po.models import LoraSpec, ModelSpec

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
CONFIG_TEXT = (REPO / "config" / "config.yaml").read_text()
SECTIONS = {
    "model": ModelSpec,
    "lora": LoraSpec,
    "sampler": SamplerSpec,
    "training": TrainingSpec,
}
JSON_TYPES = {int: {"integer"}, float: {"number"}, str: {"string"}, bool: {"boolean"}}


def schema_types(hint) -> set[str]:
    """The JSON schema types a dataclass field's type hint allows."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return set().union(*(schema_types(arg) for arg in typing.get_args(hint)))
    return {"null"} if hint is type(None) else JSON_TYPES[hint]


def properties(section: str) -> dict:
    return SCHEMA["properties"][section]["properties"]


@pytest.mark.parametrize("section", SECTIONS)
def test_schema_and_dataclass_have_the_same_fields_types_and_defaults(section: str):
    spec = SECTIONS[section]
    hints = typing.get_type_hints(spec)
    fields = {field.name: field for field in dataclasses.fields(spec)}
    assert set(properties(section)) == set(fields), section
    for name, field in fields.items():
        entry = properties(section)[name]
        declared = entry["type"] if isinstance(entry["type"], list) else [entry["type"]]
        assert set(declared) == schema_types(hints[name]), f"{section}.{name}"
        assert entry["default"] == field.default, f"{section}.{name}"
        assert type(entry["default"]) in (int, float) or type(entry["default"]) is type(
            field.default
        ), f"{section}.{name}"
        if "enum" in entry:
            assert field.default in entry["enum"], f"{section}.{name}"


@pytest.mark.parametrize("section", SECTIONS)
def test_config_yaml_names_every_field_with_a_comment_above_it(section: str):
    config = yaml.safe_load(CONFIG_TEXT)
    assert set(config[section]) == set(properties(section)), section
    lines = CONFIG_TEXT.splitlines()
    start = lines.index(f"{section}:")
    for name in properties(section):
        index = next(i for i in range(start + 1, len(lines)) if re.match(rf"  {name}:", lines[i]))
        assert lines[index - 1].strip().startswith("#"), f"config.yaml {section}.{name}"


def test_experiment_overrides_refer_to_every_training_field():
    block = SCHEMA["properties"]["experiments"]["additionalProperties"]["properties"]["training"]
    overrides = block["properties"]
    assert set(overrides) == set(properties("training"))
    for name, entry in overrides.items():
        # a reference, not a copy: one description, type and range; no default filled in here
        assert entry == {"$ref": f"#/properties/training/properties/{name}"}, name


@pytest.mark.parametrize("name", sorted(method_classes()))
def test_config_yaml_gives_every_method_option_its_declared_default(name: str):
    """Method options are declared once, by the method's Options dataclass (the schema leaves
    them to it); config.yaml shows each with that default, or leaves out a method without any."""
    declared = {
        field.name: field.default for field in dataclasses.fields(method_classes()[name].Options)
    }
    shown = yaml.safe_load(CONFIG_TEXT)["methods"].get(name)
    assert shown == (declared or None), name

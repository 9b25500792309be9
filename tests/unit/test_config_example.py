"""config.example.yaml stays complete and valid: it lists every key, with the defaults."""

from __future__ import annotations

from pathlib import Path

import yaml

from stockex.config import Settings, load_settings, to_mapping

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def keys(data: dict, prefix: str = "") -> set[str]:  # type: ignore[type-arg]
    found = set()
    for key, value in data.items():
        name = f"{prefix}{key}"
        found.add(name)
        if isinstance(value, dict):
            found |= keys(value, name + ".")
        if isinstance(value, list) and value and isinstance(value[0], dict):
            found |= keys(value[0], name + "[].")
    return found


def test_example_is_valid_and_equals_the_defaults() -> None:
    assert load_settings(EXAMPLE, environ={}) == Settings()


def test_example_lists_every_key() -> None:
    example = keys(yaml.safe_load(EXAMPLE.read_text()))
    assert keys(to_mapping(Settings())) == example

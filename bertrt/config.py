"""Model and target configurations from configs/*.yaml."""

from __future__ import annotations

from importlib import resources

import yaml

from bertrt.errors import BertrtError


def _folder(kind: str):
    return resources.files("bertrt.configs").joinpath(kind)


def names(kind: str) -> list[str]:
    """Names of the YAML files in configs/<kind>/ (``models`` or ``targets``)."""
    return sorted(p.name[:-5] for p in _folder(kind).iterdir() if p.name.endswith(".yaml"))


def load(kind: str, name: str) -> dict:
    path = _folder(kind).joinpath(f"{name}.yaml")
    if not path.is_file():
        raise BertrtError(f"no such {kind[:-1]} {name!r}; known: {', '.join(names(kind))}")
    return yaml.safe_load(path.read_text())


def model(name: str) -> dict:
    return load("models", name)


def target(name: str) -> dict:
    return load("targets", name)

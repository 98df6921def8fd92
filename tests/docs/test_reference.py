"""The API reference is complete for what the README and the guides name: every ``sorth.…``
object they mention, and every ``name(…)`` of ``sorth`` / ``sorth.nn`` they show, is rendered on
some page of docs/api/ (a ``::: target`` block, or a public member of a documented module or
class)."""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import sorth
import sorth.nn

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]
PAGES += sorted((ROOT / "docs" / "guides").glob("*.md"))
NAMED = re.compile(r"\bsorth(?:\.[A-Za-z_]\w*)+")
CALLED = re.compile(r"`([A-Za-z_]\w*)\(")


def _resolve(name: str) -> Any:
    """The object a dotted name refers to: the longest importable module, then attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


def _public(obj: Any) -> list[Any]:
    names = getattr(obj, "__all__", None)
    if names is None:
        names = [n for n in vars(obj) if not n.startswith("_")]
    return [getattr(obj, n) for n in names if hasattr(obj, n)]


@functools.cache
def _documented() -> tuple[set[int], set[str]]:
    """(ids of rendered objects, names of rendered modules) over every docs/api page."""
    ids: set[int] = set()
    modules: set[str] = set()
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        for target in re.findall(r"^::: ([\w.]+)", page.read_text(), re.M):
            obj = _resolve(target)
            ids.add(id(obj))
            if isinstance(obj, ModuleType):
                modules.add(target)
                ids.update(id(m) for m in _public(obj))
            elif inspect.isclass(obj):
                ids.update(id(m) for m in _public(obj))
            module = getattr(obj, "__module__", None) or ""
            modules.update(module.rsplit(".", i)[0] for i in range(module.count(".") + 1))
    return ids, modules


@functools.cache
def _mentions() -> dict[str, Any]:
    found = {}
    for page in PAGES:
        text = page.read_text()
        for name in NAMED.findall(text):
            found[name.rstrip(".")] = _resolve(name.rstrip("."))
        for name in CALLED.findall(text):
            for home in (sorth, sorth.nn):
                if name in getattr(home, "__all__", ()):
                    found[f"{home.__name__}.{name}"] = getattr(home, name)
    return found


def test_pages_name_objects() -> None:
    mentions = _mentions()
    assert "sorth.SOrthConfig" in mentions
    assert "sorth.nn.lipschitz_bound" in mentions


@pytest.mark.parametrize("name", sorted(_mentions()))
def test_named_object_is_on_an_api_page(name: str) -> None:
    ids, modules = _documented()
    obj = _mentions()[name]
    if isinstance(obj, ModuleType):
        assert name in modules, f"no API page documents the module {name} or anything in it"
    elif callable(obj) or inspect.isclass(obj):
        assert id(obj) in ids, f"{name} is named in the README or a guide but on no API page"


def test_sorth_config_documents_every_field() -> None:
    """``SOrthConfig`` has an ``Args:`` entry per field of its own: type, meaning and default."""
    import dataclasses

    from peft.config import PeftConfig

    from sorth.tuner.config import SOrthConfig

    doc = inspect.getdoc(SOrthConfig)
    section = doc.split("Args:\n", 1)[1].split("\n\n", 1)[0]
    entries = dict(re.findall(r"^    (\w+) \(([^)]*)\): ", section, re.M))
    inherited = {f.name for f in dataclasses.fields(PeftConfig)}
    own = [f for f in dataclasses.fields(SOrthConfig) if f.name not in inherited]
    assert [f.name for f in own] == list(entries), "Args: must list every field, in order"
    for f in own:
        text = section.split(f"    {f.name} (", 1)[1].split("\n    ", 1)[0]
        for line in section.split(f"    {f.name} (", 1)[1].splitlines()[1:]:
            if not line.startswith("        "):
                break
            text += " " + line.strip()
        default = f'"{f.default}"' if isinstance(f.default, str) else repr(f.default)
        assert f"Default ``{default}``" in text, f"{f.name}: the default {default} is not stated"
    assert "b ≥ √n" in section  # the default-size rule

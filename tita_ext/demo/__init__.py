"""The built-in story behind `tita-ext demo`: a world of coloured shapes, a tiny base VLM that
learned to say yes to absent companions from careless training answers, a much smaller reward model
trained with DPO on labelled preference pairs, and POPE on held-out scenes (base alone vs TITA),
over several seeds.

    from tita_ext.demo import DemoRecipe, run_story
    summary = run_story(DemoRecipe(), pathlib.Path("tita-demo"), cache=None)
"""

from __future__ import annotations

from typing import Any

__all__ = ["DemoRecipe", "ModelSize", "run_story"]
_HOMES = {"DemoRecipe": "recipe", "ModelSize": "recipe", "run_story": "story"}


def __getattr__(name: str) -> Any:
    """Load on first use (PEP 562): `tita-ext demo --help` and `text-demo --help` import this
    package, and story.py imports torch."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)

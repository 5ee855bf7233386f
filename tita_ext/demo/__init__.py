"""The built-in story behind `tita-ext demo`: a world of coloured shapes, a tiny base VLM that
learned its co-occurrence habits, a smaller reward model trained with DPO on the base's own
answers, and POPE on held-out scenes (base alone vs TITA).

    from tita_ext.demo import DemoRecipe, run_story
    summary = run_story(DemoRecipe(), pathlib.Path("tita-demo"), cache=None)
"""

from .recipe import DemoRecipe, ModelSize
from .story import run_story

__all__ = ["DemoRecipe", "ModelSize", "run_story"]

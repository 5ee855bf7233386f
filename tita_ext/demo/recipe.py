"""What `tita-ext demo` trains and measures: every size, step count and rate in one place.

The recipe was settled on the validation images only (held-out scenes of the test distribution
with their own seed); the POPE test images are scored once, at the end of each run. `quick()` is
the same story at a size that runs in well under a minute (CI's end-to-end check): too little
training for the numbers to mean anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSize:
    """A tiny LLaVA (tita_ext.tiny_models.tiny_llava): Llama text and CLIP vision widths and depths."""

    hidden_size: int
    layers: int
    vision_hidden_size: int
    vision_layers: int
    seed: int


@dataclass(frozen=True)
class DemoRecipe:
    """The demo world, its two models, and each stage's budget.

    world_*: `tita_ext.world.World(seed, image_size, bias, test_bias, shape_colors=True)`.
    base / reward: the model sizes; the reward model is the smaller one.
    train_scenes, sft_epochs, sft_lr, sft_batch: supervised training of both models on the
        training scenes' captions and yes/no questions (tita_ext.training.sft).
    pair_scenes, pair_split, noise_step: preference pairs from the base's own answers on fresh,
        unlabelled scenes of `pair_split` ("train", or "test": the held-out distribution, never
        the validation or test scenes themselves), clean image (chosen) against a DDPM-noised copy
        at this step of 1000 (rejected).
    dpo_*: DPO of the reward model (tita_ext.training.dpo), from its supervised weights.
    reference: "base" for the paper's form (p_ref = p_base), "reward-sft" for the reward model
        before DPO as the explicit reference (the emulated fine-tuning form).
    alphas: the sweep. The demo reports the alpha below 1 with the best validation adversarial F1
        (guidance; alpha 1 is the reward model alone, shown for reference).
    val_scenes, test_scenes: held-out scenes of the test split (validation: its own seed offset).
    """

    world_seed: int = 0
    image_size: int = 32
    world_bias: float = 0.9
    world_test_bias: float = 0.5
    base: ModelSize = ModelSize(hidden_size=64, layers=2, vision_hidden_size=64, vision_layers=2, seed=0)
    reward: ModelSize = ModelSize(hidden_size=48, layers=1, vision_hidden_size=48, vision_layers=1, seed=1)
    train_scenes: int = 1000
    sft_epochs: int = 10
    sft_lr: float = 2e-3
    sft_batch: int = 32
    pair_scenes: int = 600
    pair_split: str = "train"
    noise_step: int = 500
    dpo_beta: float = 0.1
    dpo_lr: float = 1e-4
    dpo_epochs: int = 1
    dpo_batch: int = 16
    dpo_rpo_alpha: float = 0.0
    reference: str = "base"
    alphas: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
    val_scenes: int = 150
    test_scenes: int = 200
    eval_batch: int = 64

    def __post_init__(self) -> None:
        if self.pair_split not in ("train", "test"):
            raise ValueError(f"pair_split must be 'train' or 'test', got {self.pair_split!r}")
        if self.reference not in ("base", "reward-sft"):
            raise ValueError(f"reference must be 'base' or 'reward-sft', got {self.reference!r}")
        if not self.alphas or min(self.alphas) <= 0:
            raise ValueError(f"alphas must be positive guidance weights, got {self.alphas}")
        for name in ("train_scenes", "sft_epochs", "pair_scenes", "dpo_epochs", "val_scenes", "test_scenes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def quick(cls) -> "DemoRecipe":
        """The whole story in seconds: a few scenes and one epoch per stage (a smoke run)."""
        return cls(train_scenes=40, sft_epochs=1, pair_scenes=20, val_scenes=8, test_scenes=10,
                   alphas=(0.5, 1.0), eval_batch=32)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples as lists, model sizes as dicts)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def stage_key(self, *fields: str) -> str:
        """A short hash of the named fields: the cache key of a stage that depends on them."""
        values = self.as_dict()
        text = json.dumps({f: values[f] for f in fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# The fields each cached stage depends on (its own and every earlier stage's).
WORLD_FIELDS = ("world_seed", "image_size", "world_bias", "world_test_bias")
SFT_FIELDS = WORLD_FIELDS + ("train_scenes", "sft_epochs", "sft_lr", "sft_batch")
BASE_FIELDS = SFT_FIELDS + ("base",)
REWARD_SFT_FIELDS = SFT_FIELDS + ("reward",)
PAIR_FIELDS = BASE_FIELDS + ("pair_scenes", "pair_split", "noise_step")
DPO_FIELDS = PAIR_FIELDS + ("reward", "dpo_beta", "dpo_lr", "dpo_epochs", "dpo_batch", "dpo_rpo_alpha")

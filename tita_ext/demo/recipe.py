"""What `tita-ext demo` trains and measures: every size, step count and rate in one place.

The recipe was settled on the validation images only (held-out scenes of the test distribution
with their own seed); the POPE test images are scored once, at the end of each run. `quick()` is
the same story at a size that runs in seconds (CI's end-to-end check): too little training for
the numbers to mean anything.

One recipe runs once per seed in `seeds`: `for_seed(s)` is the recipe of one run, whose `seed`
draws everything (the world's scenes, both models' initial weights and data order, the pairs'
noise, DPO's order).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from dataclasses import dataclass
from typing import Any

SEED_STRIDE = 1000  # a model's init / shuffle seed: its ModelSize.seed + SEED_STRIDE * the run's seed


@dataclass(frozen=True)
class ModelSize:
    """A tiny LLaVA (tita_ext.tiny_models.tiny_llava): Llama text and CLIP vision widths and depths;
    seed: the model's offset within a run (base and reward differ)."""

    hidden_size: int
    layers: int
    vision_hidden_size: int
    vision_layers: int
    seed: int


@dataclass(frozen=True)
class DemoRecipe:
    """The demo world, its two models, and each stage's budget.

    seed: this run's seed (see the module docstring); seeds: the runs `tita-ext demo` makes.
    world_*: `tita_ext.world.World(seed, image_size, bias, test_bias, size_range, shape_colors=True,
        hallucination)`: hallucination is the rate at which the training answers say "yes" to the
        absent companion of a shown shape.
    base / reward: the model sizes; the reward model is the smaller one.
    train_scenes, sft_epochs, sft_lr, sft_batch: supervised training of both models on the
        training scenes' captions and yes/no questions (tita_ext.training.sft); the reward model
        sees only the first `reward_train_scenes` of them (None: all), so that alone it stays weaker
        than the base, as the paper's small reward model is.
    pair_scenes, pair_split, pair_source, noise_step: preference pairs on fresh scenes of
        `pair_split` ("train", or "test": the held-out distribution, never the validation or test
        scenes themselves). pair_source "noise": unlabelled, the base's clean-image answer (chosen)
        against its answer on a DDPM-noised copy at `noise_step` of 1000 (rejected);
        "labels": every question's true answer (chosen) against the other one (rejected), a
        small human-labelled preference set.
    dpo_*: DPO of the reward model (tita_ext.training.dpo), from its supervised weights.
    reference: "reward-sft": p_ref is the reward model before DPO, so log p_DPO - log p_SFT is the
        token reward DPO trained (times 1/beta); "base": p_ref = p_base, a geometric mix of the
        base and the reward model (alpha 1 is the reward model alone).
    alphas: the sweep (1 must be in it). The demo reports the alpha with the best validation
        adversarial F1 (with the base as reference only alphas below 1: 1 is the reward model
        alone). The rival, the reward model before DPO guiding the base, sweeps the alphas up to 1
        with the base as its reference, at TITA's alpha (reference "base": the same guidance) or
        at its own best validation alpha (reference "reward-sft").
    val_scenes, test_scenes: held-out scenes of the test split (validation: its own seed offset).
    """

    seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    image_size: int = 32
    world_bias: float = 0.6
    world_test_bias: float = 0.5
    world_size_range: tuple[float, float] = (0.28, 0.4)
    world_hallucination: float = 0.85
    base: ModelSize = ModelSize(hidden_size=96, layers=1, vision_hidden_size=64, vision_layers=1, seed=0)
    reward: ModelSize = ModelSize(hidden_size=32, layers=1, vision_hidden_size=32, vision_layers=1, seed=1)
    train_scenes: int = 1000
    reward_train_scenes: int | None = 300
    sft_epochs: int = 10
    sft_lr: float = 1e-3
    sft_batch: int = 32
    pair_scenes: int = 200
    pair_split: str = "test"
    pair_source: str = "labels"
    noise_step: int = 500
    dpo_beta: float = 0.1
    dpo_lr: float = 1e-3
    dpo_epochs: int = 4
    dpo_batch: int = 16
    dpo_rpo_alpha: float = 0.0
    reference: str = "reward-sft"
    alphas: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0)
    val_scenes: int = 150
    test_scenes: int = 200
    eval_batch: int = 64

    def __post_init__(self) -> None:
        if self.pair_split not in ("train", "test"):
            raise ValueError(f"pair_split must be 'train' or 'test', got {self.pair_split!r}")
        if self.pair_source not in ("noise", "labels"):
            raise ValueError(f"pair_source must be 'noise' or 'labels', got {self.pair_source!r}")
        if not 0.0 <= self.world_hallucination <= 1.0:
            raise ValueError(f"world_hallucination must be a probability in [0, 1], got {self.world_hallucination}")
        if self.reference not in ("base", "reward-sft"):
            raise ValueError(f"reference must be 'base' or 'reward-sft', got {self.reference!r}")
        if not self.alphas or min(self.alphas) <= 0:
            raise ValueError(f"alphas must be positive guidance weights, got {self.alphas}")
        if 1.0 not in self.alphas or min(self.alphas) >= 1.0:
            raise ValueError(f"alphas must hold 1 (each reward model alone) and one below 1, got {self.alphas}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, at least one, got {self.seeds}")
        for name in ("train_scenes", "sft_epochs", "pair_scenes", "dpo_epochs", "val_scenes", "test_scenes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.reward_train_scenes is not None and not 1 <= self.reward_train_scenes <= self.train_scenes:
            raise ValueError(f"reward_train_scenes must be between 1 and train_scenes ({self.train_scenes}), "
                             f"got {self.reward_train_scenes}: set it with train_scenes (None: all of them)")

    @classmethod
    def quick(cls) -> "DemoRecipe":
        """The whole story in seconds: two seeds, a few scenes and one epoch per stage (a smoke run)."""
        return cls(seeds=(0, 1), train_scenes=40, reward_train_scenes=20, sft_epochs=1, pair_scenes=20, val_scenes=8,
                   test_scenes=10, alphas=(0.5, 1.0), eval_batch=32)

    def for_seed(self, seed: int) -> "DemoRecipe":
        """The recipe of one run: `seed` draws everything, `seeds` holds only it."""
        return dataclasses.replace(self, seed=seed, seeds=(seed,))

    def model_seed(self, size: ModelSize) -> int:
        """The init and data-order seed of a model of this run."""
        return size.seed + SEED_STRIDE * self.seed

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples as lists, model sizes as dicts)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def stage_key(self, *fields: str, code: tuple[str, ...] = ()) -> str:
        """A short hash of everything that changes a stage's result: the named recipe fields, the
        machine's arithmetic (torch / transformers versions, the CPU code path torch runs:
        `environment()`), and the source of the modules in `code` (paths under tita_ext/)."""
        values = self.as_dict()
        text = json.dumps({"fields": {f: values[f] for f in fields}, "environment": environment(),
                           "code": code_version(code)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def environment() -> dict[str, str]:
    """What besides the recipe changes a trained model's numbers: library versions and the CPU
    instruction set torch's kernels use (AVX2 and AVX-512 paths round differently)."""
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


PACKAGE = pathlib.Path(__file__).resolve().parent.parent


def code_version(paths: tuple[str, ...]) -> str:
    """A hash of these source files (relative to the tita_ext package): a stage whose code
    changed is trained again."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.encode() + b"\0" + (PACKAGE / path).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


# The fields each cached stage depends on (its own and every earlier stage's).
WORLD_FIELDS = ("seed", "image_size", "world_bias", "world_test_bias", "world_size_range", "world_hallucination")
SFT_FIELDS = WORLD_FIELDS + ("train_scenes", "sft_epochs", "sft_lr", "sft_batch")
BASE_FIELDS = SFT_FIELDS + ("base",)
REWARD_SFT_FIELDS = SFT_FIELDS + ("reward", "reward_train_scenes")
PAIR_FIELDS = BASE_FIELDS + ("pair_scenes", "pair_split", "pair_source", "noise_step")
DPO_FIELDS = PAIR_FIELDS + ("reward", "reward_train_scenes", "dpo_beta", "dpo_lr", "dpo_epochs", "dpo_batch",
                            "dpo_rpo_alpha")

# The source each cached stage runs (its own and every earlier stage's), under tita_ext/.
WORLD_CODE = ("world/scenes.py", "world/render.py", "world/text.py", "demo/stages.py")
SFT_CODE = WORLD_CODE + ("tiny_models.py", "training/sft.py", "training/dpo.py", "training/loop.py")
PAIR_CODE = SFT_CODE + ("training/pairs.py",)
DPO_CODE = PAIR_CODE

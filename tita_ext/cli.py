"""The `tita-ext` command: guided decoding of local Hugging Face models, and a built-in demo.

    tita-ext generate --base DIR --reward DIR [--ref DIR] [--image FILE] --prompt TEXT [options]
    tita-ext generate --base DIR --reward DIR --prompts FILE.jsonl [--out FILE.jsonl] [--chat] [--threads N]
    tita-ext demo [--out DIR] [--quick] [options]   (the built-in story: tita_ext/demo/cli_demo.py)
    tita-ext decode-demo [--alpha A] [--color red] [--save-demo-models DIR] [options]
    tita-ext eval-pope --base DIR --reward DIR --data DIR [--alphas ...] (tita_ext/eval/cli_pope.py)
    tita-ext pairs --base DIR --data FILE.jsonl --out pairs.jsonl [options] (tita_ext/training/cli_train.py)
    tita-ext train-reward --init DIR --pairs pairs.jsonl --out DIR [options] (tita_ext/training/cli_train.py)
    tita-ext                  (the demo)

`main` returns the exit code (0 ok, 2 usage or input error), so the console script's
`sys.exit(main())` works as it is. Only the chosen command's module is imported (COMMANDS), and
torch / transformers only when a command runs: `tita-ext --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

# Nothing here imports torch or transformers at module level: `tita-ext --help` prints at once.
# They are imported by the functions that use them.
if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .generate import GuidedOutput
    from .prompt_inputs import Preprocessor

PROG = "tita-ext"
DEMO_PROMPT = "USER: <image>\nWhat is in the picture? ASSISTANT:"


class _Dtypes(Mapping):
    """--dtype name -> torch dtype, resolved (importing torch) only when looked up."""

    NAMES = ("float32", "bfloat16", "float16")

    def __getitem__(self, name: str) -> torch.dtype:
        if name not in self.NAMES:
            raise KeyError(name)
        import torch

        return getattr(torch, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.NAMES)

    def __len__(self) -> int:
        return len(self.NAMES)


DTYPES = _Dtypes()

# Every command, in the order `--help` lists them, with its one-line help; the commands of other
# modules name the module that adds (add_parser) and runs (run) them. A module is imported only
# for its own command, so the top-level help imports none of them.
COMMANDS = {
    "demo": ("tita_ext.demo.cli_demo", "the built-in story: train a base and a reward model, then POPE base vs TITA"),
    "text-demo": ("tita_ext.demo.text_demo", "real weights: SmolLM2-135M-Instruct guided by a DPO copy of itself"),
    "generate": (None, "decode with local Hugging Face model folders"),
    "decode-demo": (None, "guided decoding with a random-weight tiny pair (seconds, no training)"),
    "eval-pope": ("tita_ext.eval.cli_pope", "POPE evaluation: base vs TITA over a sweep of alphas"),
    "pairs": ("tita_ext.training.cli_train", "preference pairs from the base model's own answers (clean vs noised "
                                             "image)"),
    "train-reward": ("tita_ext.training.cli_train", "train a reward model with DPO on preference pairs"),
    "export-vllm": ("tita_ext.vllm.cli_export", "write a folder that vLLM serves as the TITA composite (base + "
                                                "reward)"),
}


class CLIError(Exception):
    """A problem with the command's input: printed as `tita-ext: error: ...`, exit code 2."""


# --------------------------------------------------------------------------- arguments

def _sampling_arguments() -> argparse.ArgumentParser:
    """The decoding options `generate` and `decode-demo` share."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("decoding", "unset options come from the base model's generation_config")
    group.add_argument("--alpha", type=float, default=0.6, metavar="A",
                       help="guidance weight: 0 base only, 1 reward only (default 0.6)")
    group.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    group.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (with --do-sample)")
    group.add_argument("--top-k", type=int, metavar="K", help="keep the K most likely tokens (with --do-sample)")
    group.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling mass (with --do-sample)")
    group.add_argument("--min-p", type=float, metavar="M",
                       help="min-p cut, relative to the top token (with --do-sample)")
    group.add_argument("--plausibility", type=float, default=0.0, metavar="B",
                       help="only tokens with p_base >= B * max p_base may be chosen (default 0: off)")
    group.add_argument("--repetition-penalty", type=float, metavar="R",
                       help="as in generate: divide the base logits of tokens already in the text by R (1: off)")
    group.add_argument("--min-new-tokens", type=int, metavar="N", help="no end-of-sequence before N new tokens")
    group.add_argument("--seed", type=int, metavar="S", help="random seed: the same seed gives the same text")
    group.add_argument("--stop", nargs="+", metavar="STR", help="stop once the new text contains STR")
    return parent


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The `tita-ext` parser. command: the command whose module's full parser is added ("*": every
    command; None: none, for the top-level help); the others are listed by their help line only."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="TITA guided decoding: a small reward model steers a base model token by token. "
                               "Without a command, runs the built-in demo.")
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", required=True)
    added: set[str] = set()
    for name, (module, help_line) in COMMANDS.items():
        if name in added:
            continue
        if module is None:
            _OWN_PARSERS[name](commands, help_line)
        elif command in ("*", name):
            before = set(commands.choices)
            importlib.import_module(module).add_parser(commands)
            added |= set(commands.choices) - before
        else:
            commands.add_parser(name, help=help_line, add_help=False)
        added.add(name)
    return parser


def _add_generate(commands, help_line: str) -> None:
    gen = commands.add_parser("generate", parents=[_sampling_arguments()], help=help_line,
                              description="Guided decoding of local Hugging Face model folders (offline).")
    gen.add_argument("--base", required=True, metavar="DIR", help="the base model's folder")
    gen.add_argument("--reward", required=True, metavar="DIR", help="the reward model's folder (same tokenizer)")
    gen.add_argument("--ref", metavar="DIR", help="a reference model's folder (default: the base model)")
    prompts = gen.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", metavar="TEXT",
                         help="the prompt, used as it is (with --image and no image placeholder, one is put first)")
    prompts.add_argument("--prompts", metavar="FILE.jsonl",
                         help='JSON lines {"prompt": text[, "image": path][, "id": ...]} (image paths relative to the '
                              "file); results as JSON lines to --out or stdout")
    gen.add_argument("--image", metavar="FILE", help="an image file for vision-language models (with --prompt)")
    gen.add_argument("--chat", action="store_true",
                     help="wrap each prompt in the base tokenizer's chat template (a user turn, then the "
                          "assistant's start)")
    gen.add_argument("--out", metavar="FILE.jsonl",
                     help="write one JSON line per result here (atomically: a temporary file, then a rename)")
    gen.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="default 64")
    gen.add_argument("--show-rewards", action="store_true", help="print each token's logprob and reward")
    gen.add_argument("--dtype", choices=list(DTYPES), default="float32", help="the models' dtype (default float32)")
    gen.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    gen.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (torch.set_num_threads)")


def _add_decode_demo(commands, help_line: str) -> None:
    demo = commands.add_parser("decode-demo", parents=[_sampling_arguments()], help=help_line,
                               description="Guided decoding with a tiny LLaVA pair built in code (random weights).")
    demo.add_argument("--prompt", default=DEMO_PROMPT, metavar="TEXT", help=f"default {DEMO_PROMPT!r}")
    demo.add_argument("--color", default="red", metavar="NAME",
                      help="colour of the demo image: red, green, blue, yellow, white or black")
    demo.add_argument("--max-new-tokens", type=int, default=16, metavar="N", help="default 16")
    demo.add_argument("--save-demo-models", metavar="DIR",
                      help="also save the tiny models, processor and image to DIR/base, DIR/reward, DIR/demo.png")


_OWN_PARSERS = {"generate": _add_generate, "decode-demo": _add_decode_demo}


# --------------------------------------------------------------------------- loading

def _model_type(folder: str, flag: str) -> str:
    """The config's model_type of a local model folder, or a CLIError saying what is missing."""
    from transformers import AutoConfig

    path = pathlib.Path(folder)
    if not path.is_dir():
        raise CLIError(f"{flag} folder {folder!r} does not exist")
    if not (path / "config.json").is_file():
        raise CLIError(f"{flag} folder {folder!r} has no config.json: give a folder saved with save_pretrained")
    return AutoConfig.from_pretrained(folder, local_files_only=True).model_type


def load_preprocessors(folders: dict[str, str]) -> dict[str, Preprocessor]:
    """Each role's processor or tokenizer, before any model is loaded (so a tokenizer mismatch
    fails in seconds)."""
    from .prompt_inputs import family_of, load_preprocessor

    return {role: load_preprocessor(folder, family_of(_model_type(folder, f"--{role}")))
            for role, folder in folders.items()}


def load_model(folder: str, pre: Preprocessor, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """The folder's model: AutoModelForImageTextToText for VLMs, else AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if pre.is_vlm else AutoModelForCausalLM
    model = auto.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return model.to(device).eval()


def load_image(path: str | None):
    """The --image file as an RGB PIL image (None without --image)."""
    if path is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise CLIError(f"cannot read --image {path!r}: {error}") from None


def role_inputs(pre: Preprocessor, base_pre: Preprocessor, prompt: str, image) -> Any:
    """A model's inputs for the prompt. A text-only reward/reference model beside a VLM base gets
    the prompt without the image."""
    from .prompt_inputs import build_inputs

    if image is not None and not pre.is_vlm and pre is not base_pre:
        if base_pre.image_token:
            prompt = prompt.replace(base_pre.image_token, "")
        image = None
    return build_inputs(pre, prompt, image)


def chat_prompt(pre: Preprocessor, prompt: str, with_image: bool) -> str:
    """`prompt` as one user turn in the base model's chat template, ending where the assistant's answer
    starts (the processor's template when it has one: it places the image; else the tokenizer's,
    with the image placeholder put in the user turn)."""
    from .prompt_inputs import place_image

    processor = pre.processor if getattr(pre.processor, "chat_template", None) else None
    if processor is not None:
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
    if not getattr(pre.tokenizer, "chat_template", None):
        raise CLIError("--chat: the base model's tokenizer has no chat template (chat_template in "
                       "tokenizer_config.json or chat_template.jinja): drop --chat and write the prompt in the "
                       "model's format")
    if with_image:
        prompt = place_image(pre, prompt)
    return pre.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)


# --------------------------------------------------------------------------- decoding and printing

def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """guided_generate's decoding keywords from the parsed options (unset ones: the model's
    generation_config)."""
    return dict(alpha=args.alpha, do_sample=True if args.do_sample else None, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, plausibility=args.plausibility,
                max_new_tokens=args.max_new_tokens, seed=args.seed, stop_strings=args.stop,
                repetition_penalty=args.repetition_penalty, min_new_tokens=args.min_new_tokens)


def text_streamer(tokenizer):
    """Prints the new text as it is generated (special tokens left out)."""
    from transformers import TextStreamer

    return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def print_reward_table(tokenizer, out: GuidedOutput, row: int = 0) -> None:
    """One line per new token of `row`: index, id, text, guided logprob, token reward; then a summary."""
    length = int(out.lengths[row])
    ids = out.new_tokens[row, :length].tolist()
    logprobs = out.logprobs[row, :length].tolist()
    rewards = out.token_rewards[row, :length].tolist()
    print(f"{'#':>4}  {'id':>6}  {'token':<20} {'logprob':>9} {'reward':>9}")
    for index, (token, logprob, reward) in enumerate(zip(ids, logprobs, rewards)):
        print(f"{index:>4}  {token:>6}  {tokenizer.decode([token])!r:<20} {logprob:>9.3f} {reward:>+9.3f}")
    t = out.timings
    mean = sum(rewards) / length if length else 0.0
    print(f"finish: {out.finish_reason[row]}, {length} new tokens, mean reward {mean:+.3f}, "
          f"prefill {t.prefill_s * 1e3:.0f} ms, decode {t.decode_s * 1e3:.0f} ms, {t.tokens_per_s:.1f} tokens/s")


def decode(models: dict[str, torch.nn.Module], inputs: dict[str, Any], tokenizers: dict[str, Any],
           args: argparse.Namespace, stream: bool = True, **overrides: Any) -> GuidedOutput:
    """guided_generate on the models (streaming the text to stdout unless stream=False); returns its
    GuidedOutput."""
    from .generate import guided_generate

    kwargs = sampling_kwargs(args)
    kwargs.update(overrides)
    out = guided_generate(
        models["base"], models["reward"], inputs["base"], reward_inputs=inputs["reward"],
        ref_model=models.get("ref"), ref_inputs=inputs.get("ref"), tokenizer=tokenizers["base"],
        reward_tokenizer=tokenizers["reward"], ref_tokenizer=tokenizers.get("ref"),
        streamer=text_streamer(tokenizers["base"]) if stream else None, **kwargs)
    sys.stdout.flush()
    return out


def result_record(out: GuidedOutput, row: int, line: int, prompt: str, given_id: Any) -> dict[str, Any]:
    """One JSON-lines result of `tita-ext generate --prompts/--out`."""
    length = int(out.lengths[row])
    rewards = out.token_rewards[row, :length].tolist()
    record = {"line": line}
    if given_id is not None:
        record["id"] = given_id
    record.update(prompt=prompt, text=out.text[row], new_tokens=out.new_tokens[row, :length].tolist(),
                  finish_reason=out.finish_reason[row], mean_reward=sum(rewards) / length if length else 0.0)
    return record


# --------------------------------------------------------------------------- commands

def run_generate(args: argparse.Namespace) -> int:
    """Check the prompts and the output path, load the folders (tokenizers checked first), build
    each model's inputs, decode: the text streamed, or JSON lines to --out / stdout."""
    import json

    import torch

    from .cli_prompts import PromptLine, check_out_path, read_prompts, write_jsonl_atomically
    from .setup_checks import check_tokenizers

    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was given but torch sees no CUDA device")
    if args.prompts and args.image:
        raise CLIError("--image goes with --prompt; with --prompts give each line's image as its \"image\" key")
    if args.out:
        check_out_path(args.out)
    lines = read_prompts(args.prompts) if args.prompts else [PromptLine(0, args.prompt, args.image)]
    folders = {"base": args.base, "reward": args.reward}
    if args.ref:
        folders["ref"] = args.ref
    pres = load_preprocessors(folders)
    tokenizers = {role: pre.tokenizer for role, pre in pres.items()}
    for role in folders:
        if role != "base":
            check_tokenizers(tokenizers["base"], tokenizers[role], role)
    # Every prompt's inputs before any model loads: a bad image or template fails in seconds.
    jobs = []
    for item in lines:
        image = load_image(item.image)
        # The models share a tokenizer: the base's chat template gives every model's text.
        prompt = chat_prompt(pres["base"], item.prompt, image is not None) if args.chat else item.prompt
        jobs.append((item, {role: role_inputs(pre, pres["base"], prompt, image) for role, pre in pres.items()}))
    models = {role: load_model(folder, pres[role], DTYPES[args.dtype], args.device)
              for role, folder in folders.items()}
    structured = bool(args.prompts or args.out)
    records = []
    for item, inputs in jobs:
        out = decode(models, inputs, tokenizers, args, stream=not structured)
        if args.show_rewards and not structured:
            print_reward_table(tokenizers["base"], out)
        if structured:
            records.append(result_record(out, 0, item.line, item.prompt, item.id))
            if not args.out:
                print(json.dumps(records[-1], ensure_ascii=False), flush=True)
    if args.out:
        write_jsonl_atomically(args.out, records)
        print(f"wrote {len(records)} results to {args.out}", file=sys.stderr)
    return 0


def save_demo_models(folder: str, models: dict[str, torch.nn.Module], processor, image) -> None:
    """Save the demo's models (each with the processor) and image, for `tita-ext generate`."""
    from .safe_write import atomic_file, atomic_folder

    root = pathlib.Path(folder)
    for role, model in models.items():
        with atomic_folder(root / role) as partial:  # a model folder appears complete or not at all
            model.save_pretrained(partial)
            processor.save_pretrained(partial)
    with atomic_file(root / "demo.png", "wb") as out:
        image.save(out, format="PNG")
    print(f"saved the demo models to {root / 'base'} and {root / 'reward'}, the image to {root / 'demo.png'}; try:\n"
          f"  {PROG} generate --base {root / 'base'} --reward {root / 'reward'} --image {root / 'demo.png'} "
          f"--prompt 'What is in the picture?' --show-rewards\n")


def run_decode_demo(args: argparse.Namespace) -> int:
    """The tiny built-in LLaVA pair: base-only text, guided text, then the reward table."""
    from .prompt_inputs import Preprocessor, build_inputs
    from .tiny_models import demo_image, tiny_llava, tiny_llava_processor, tiny_tokenizer

    image = demo_image(args.color)
    print("tita-ext decode-demo: TITA guided decoding, end to end, with tiny models built in code (no download).\n"
          "  base:   a tiny LLaVA (CLIP vision tower, 2-layer Llama, hidden 64, 512 logits)\n"
          "  reward: a smaller tiny LLaVA (1 layer, hidden 32, 448 logits: a narrower padded width)\n"
          f"  image:  a {args.color} 40x40 square; prompt: {args.prompt!r}\n"
          "Their weights are random, so the text means nothing: the demo shows the decoding path working.\n",
          flush=True)
    processor = tiny_llava_processor(tiny_tokenizer())
    models = {"base": tiny_llava(seed=0), "reward": tiny_llava(seed=1, hidden_size=32, layers=1, vocab_width=448)}
    if args.save_demo_models:
        save_demo_models(args.save_demo_models, models, processor, image)
    pre = Preprocessor("llava", processor.tokenizer, processor=processor)
    inputs = build_inputs(pre, args.prompt, image)
    inputs = {"base": inputs, "reward": inputs}
    tokenizers = {"base": processor.tokenizer, "reward": processor.tokenizer}

    print("base only (alpha 0): ", end="", flush=True)
    decode(models, inputs, tokenizers, args, alpha=0.0)
    print(f"guided (alpha {args.alpha:g}):  ", end="", flush=True)
    out = decode(models, inputs, tokenizers, args)
    print()
    print_reward_table(processor.tokenizer, out)
    return 0


# --------------------------------------------------------------------------- entry point

def _quiet_transformers() -> None:
    """Offline, and no progress bars while loading or saving."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging

    logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (0 ok, 2 error). Without a command: the demo."""
    argv = list(sys.argv[1:] if argv is None else argv) or ["demo"]
    # The command is the first word (the top level has no options but --help): only its module's
    # parser is built, so `tita-ext --help` imports nothing heavy.
    command = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error argparse has printed
        return done.code if isinstance(done.code, int) else 2
    _quiet_transformers()
    module = COMMANDS[args.command][0]
    run = importlib.import_module(module).run if module else _OWN_RUNS[args.command]
    try:
        return run(args)
    except (CLIError, ValueError, TypeError, OSError, ImportError) as error:
        sys.stdout.flush()
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


_OWN_RUNS = {"generate": run_generate, "decode-demo": run_decode_demo}

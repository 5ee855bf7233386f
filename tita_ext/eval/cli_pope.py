"""`tita-ext eval-pope`: POPE for the base model alone and TITA at a sweep of alphas.

    tita-ext eval-pope --base DIR --reward DIR --data DIR [--splits random popular adversarial]
        [--alphas 0.3 0.6 1.0] [--batch-size 8] [--limit N] [--out results.json] [--plot f1.png]

--data holds pope_{split}.jsonl for each split and the images their "image" paths name
(relative to --data, or to --images). `add_parser` adds the subcommand to the `tita-ext`
parser; `run` executes it. The model loading helpers of `tita_ext.cli` are imported when used,
so `tita_ext.cli` may import this module at its top.

Several GPUs or processes (see `tita_ext.eval.sharding`): under a launcher the questions are
split over the processes and the answers gathered before scoring; rank 0 alone prints the table
and writes the JSON and the plot, which equal a single process's (timings aside):

    torchrun --nproc_per_node 4 -m tita_ext eval-pope ... --device auto
    accelerate launch --multi_gpu --num_processes 4 -m tita_ext eval-pope ... --device auto

`--device auto` puts each process's models on cuda:LOCAL_RANK (the CPU without CUDA); `--device
cuda` does too. A base model too big for one GPU: `--device-map auto` loads it with
`from_pretrained(..., device_map="auto")`, sharded over the visible GPUs (under a launcher with
several processes per machine, each takes its own contiguous group of them, `rank_gpus`). The
reward model then goes to the base's input-embedding device, which is where the base's logits
come back (accelerate's dispatch returns the top module's outputs on its input device):
`guided_generate` needs both models' logits on one device, and this is checked with a one-token
forward before the evaluation starts.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - annotations only: --help must not import torch
    import torch

from .run_pope import POPE_TEMPLATE, SPLITS

COMMAND = "eval-pope"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the eval-pope subcommand to `subparsers` (an argparse subparsers action); returns it."""
    parser = subparsers.add_parser(
        COMMAND, help="POPE evaluation: base vs TITA over a sweep of alphas",
        description="POPE yes/no object-probing evaluation of local Hugging Face model folders (offline): "
                    "accuracy, precision, recall, F1 and yes-ratio per split, for the base model alone and "
                    "TITA at each alpha; writes a results JSON and a plot of F1 against alpha.")
    parser.add_argument("--base", required=True, metavar="DIR", help="the base model's folder")
    parser.add_argument("--reward", required=True, metavar="DIR", help="the reward model's folder (same tokenizer)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="folder with pope_{split}.jsonl files (keys image, question, label) and the images")
    parser.add_argument("--images", metavar="DIR", help="the folder image paths are relative to (default: --data)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), metavar="SPLIT",
                        help=f"splits to evaluate (default: {' '.join(SPLITS)})")
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.3, 0.6, 1.0], metavar="A",
                        help="guidance weights to sweep; the base alone (alpha 0) is always run (default 0.3 0.6 1.0)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="questions per batch (default 8)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N questions of each split")
    parser.add_argument("--max-new-tokens", type=int, default=4, metavar="N", help="tokens per answer (default 4)")
    parser.add_argument("--template", default=POPE_TEMPLATE, metavar="TEXT",
                        help="prompt with {question} and <image> (default: %(default)r)")
    parser.add_argument("--unparsed", choices=["no", "yes"], default="no",
                        help="what an answer that says neither yes nor no counts as (default no; the reference "
                             "POPE scorer's convention is yes)")
    parser.add_argument("--out", default="results.json", metavar="FILE", help="results JSON (default results.json)")
    parser.add_argument("--plot", default="f1.png", metavar="FILE",
                        help="PNG of F1 against alpha (default f1.png; needs matplotlib; '' for none)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="the models' dtype (default float32)")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                        help="cpu (default); cuda: cuda:LOCAL_RANK under a launcher (torchrun, accelerate launch), "
                             "else cuda:0; auto: cuda:LOCAL_RANK when CUDA is available, else cpu")
    parser.add_argument("--device-map", choices=["auto", "balanced", "balanced_low_0", "sequential"],
                        metavar="MAP", help="shard the base model over the visible GPUs with Hugging Face's "
                                            "device_map (e.g. auto; needs accelerate); the reward model goes "
                                            "where the base's logits are (--device is then not used)")
    parser.add_argument("--keep-answers", action="store_true",
                        help="also write every answer's text in the results JSON (per split and setting, "
                             "in the question file's order)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def split_files(data: str, splits: list[str]) -> dict[str, pathlib.Path]:
    """pope_{split}.jsonl in `data` for each split; a CLIError naming what is missing."""
    from ..cli import CLIError

    folder = pathlib.Path(data)
    if not folder.is_dir():
        raise CLIError(f"--data folder {data!r} does not exist")
    files = {split: folder / f"pope_{split}.jsonl" for split in splits}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        found = sorted(p.name for p in folder.glob("pope_*.jsonl"))
        raise CLIError(f"no question file {', '.join(missing)} (found: {', '.join(found) or 'none'})")
    return files


def check_outputs(out: str | None, plot: str | None, say: bool = True) -> None:
    """--out and --plot are files that can be written (before any work); an existing --out is
    only replaced when the run finishes, which is said now (when `say`: rank 0)."""
    from ..cli import CLIError
    from ..safe_write import check_output_path

    for flag, path in (("--out", out), ("--plot", plot)):
        if path:
            check_output_path(path, "file", flag)
    if out and plot and pathlib.Path(out).resolve() == pathlib.Path(plot).resolve():
        raise CLIError(f"--out and --plot are the same file {out!r}: give two paths")
    if say and out and pathlib.Path(out).is_file():
        print(f"note: --out {out} exists; it is replaced when this run finishes (its 'finished' time says "
              "which run wrote it)", flush=True)


def finished_now() -> str:
    """The current UTC time, ISO 8601 to the second: when the results were written."""
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """What the results were computed from (the folders, the question files and the settings),
    stored beside them so an older results file is told apart from this run's."""
    return {"base": args.base, "reward": args.reward, "data": args.data, "images": args.images,
            "splits": list(args.splits), "limit": args.limit, "dtype": args.dtype}


def check_lengths(pre, folders: tuple[str, str], template: str, questions: dict[str, list[dict]],
                  images: str, max_new_tokens: int) -> None:
    """Every question's prompt, with its image and the new tokens, must fit both models' maximum
    positions: checked from the tokenizer and the configs before the models load."""
    from ..prompt_lengths import check_prompt_lengths, image_tokens, smallest_limit
    from .run_pope import _load_image, make_prompt

    limit, folder = smallest_limit(folders)
    first = next(iter(questions.values()))[0]
    prompt = make_prompt(template, first["question"], pre)
    extra = max_new_tokens + image_tokens(pre, prompt, _load_image(pathlib.Path(images), first["image"]))
    prompts = [(q["line"], make_prompt(template, q["question"], pre)) for items in questions.values() for q in items]
    check_prompt_lengths(pre.tokenizer, prompts, limit, extra, "the prompt with its 'question'", folder)


def pick_device(choice: str, shard) -> "torch.device":
    """--device as a torch device for this rank (`Shard.device` for auto and cuda)."""
    import torch

    from ..cli import CLIError

    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was given but torch sees no CUDA device")
    device = shard.device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def load_base_device_map(folder: str, pre: Any, dtype: "torch.dtype", device_map: str, shard) -> "torch.nn.Module":
    """The base model loaded with from_pretrained(device_map=...): sharded over the visible GPUs,
    or over this rank's group of them (`rank_gpus`) when several processes share a machine."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from .sharding import rank_gpus

    auto = AutoModelForImageTextToText if pre.is_vlm else AutoModelForCausalLM
    kwargs: dict[str, Any] = {}
    if torch.cuda.is_available() and shard.distributed:
        gpus = rank_gpus(shard)
        # only this rank's GPUs (no CPU offload), 90% of their free memory
        kwargs["max_memory"] = {gpu: int(torch.cuda.mem_get_info(gpu)[0] * 0.9) for gpu in gpus}
    model = auto.from_pretrained(folder, dtype=dtype, local_files_only=True, device_map=device_map, **kwargs)
    return model.eval()


def check_logits_device(base: "torch.nn.Module", device: "torch.device") -> None:
    """The base's logits must come out on `device` (the reward model's): one token through it."""
    import torch

    from ..cli import CLIError

    config = base.config
    special = {getattr(config, name, None) for name in ("image_token_id", "image_token_index", "video_token_id")}
    token = next(i for i in range(len(special) + 1) if i not in special)  # a text token, no image needed
    with torch.inference_mode():
        logits = base(input_ids=torch.full((1, 1), token, dtype=torch.int64, device=device)).logits
    if logits.device != device:
        raise CLIError(f"the base model (device_map {getattr(base, 'hf_device_map', None)}) returns its logits on "
                       f"{logits.device}, not on {device} where the reward model is: guided decoding needs both "
                       "on one device")


def run(args: argparse.Namespace) -> int:
    """Load the models, evaluate every split, print the table, write the JSON and the plot.
    Input problems raise CLIError / ValueError (printed by `tita_ext.cli.main`, exit code 2).
    Under a launcher (RANK / WORLD_SIZE set) each process answers its share of the questions and
    rank 0 alone prints and writes."""
    from ..cli import DTYPES, CLIError, load_model, load_preprocessors
    from ..adapters.runner import model_device
    from ..setup_checks import check_tokenizers
    from .run_pope import evaluate_pope, format_table, load_questions, write_results
    from .sharding import close_process_group, detect_shard

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be at least 1, got {args.limit}")
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # say so before the evaluation runs
        raise CLIError("--plot needs matplotlib: pip install matplotlib (or tita-ext[eval]), or pass --plot '' "
                       "for no plot")
    shard = detect_shard()
    device_map = getattr(args, "device_map", None)
    device = pick_device(args.device, shard)
    template = args.template.replace("\\n", "\n")  # a "\n" typed in a shell is a newline
    try:
        template.format(question="?")
    except (KeyError, IndexError, ValueError) as error:
        raise CLIError(f"--template may hold only the field {{question}} (double other braces): {error!r}") from None
    if "{question}" not in template:
        raise CLIError("--template must hold {question}")
    check_outputs(args.out, args.plot, say=shard.is_main)
    images = args.images or args.data
    questions = {split: load_questions(path, args.limit, images)
                 for split, path in split_files(args.data, args.splits).items()}
    pres = load_preprocessors({"base": args.base, "reward": args.reward})
    check_tokenizers(pres["base"].tokenizer, pres["reward"].tokenizer, "reward")
    check_lengths(pres["base"], (args.base, args.reward), template, questions, images, args.max_new_tokens)
    if device_map is not None:
        base = load_base_device_map(args.base, pres["base"], DTYPES[args.dtype], device_map, shard)
        device = model_device(base)  # where its inputs go and its logits come back
        check_logits_device(base, device)
    else:
        base = load_model(args.base, pres["base"], DTYPES[args.dtype], device)
    reward = load_model(args.reward, pres["reward"], DTYPES[args.dtype], device)
    reward_pre = pres["reward"] if pres["reward"].family != pres["base"].family else None
    try:
        results = evaluate_pope(base, reward, pres["base"], questions, args.images or args.data, args.alphas,
                                batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                template=template, reward_processor=reward_pre, unparsed=args.unparsed,
                                keep_answers=getattr(args, "keep_answers", False),
                                progress=not args.no_progress, shard=shard)
    finally:
        close_process_group()
    if shard.is_main:
        print(format_table(results))
        write_results(dict(results, finished=finished_now(), inputs=run_inputs(args)), args.out, args.plot)
        ranks = f" over {shard.world_size} processes" if shard.distributed else ""
        written = " and ".join(path for path in (args.out, args.plot) if path)
        print(f"wrote {written} ({results['seconds']:.1f} s{ranks})")
    return 0

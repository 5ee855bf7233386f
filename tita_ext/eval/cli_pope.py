"""`tita-ext eval-pope`: POPE for the base model alone and TITA at a sweep of alphas.

    tita-ext eval-pope --base DIR --reward DIR --data DIR [--splits random popular adversarial]
        [--alphas 0.3 0.6 1.0] [--batch-size 8] [--limit N] [--out results.json] [--plot f1.png]

--data holds pope_{split}.jsonl for each split and the images their "image" paths name
(relative to --data, or to --images). `add_parser` adds the subcommand to the `tita-ext`
parser; `run` executes it. The model loading helpers of `tita_ext.cli` are imported when used,
so `tita_ext.cli` may import this module at its top.
"""

from __future__ import annotations

import argparse
import pathlib

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
                        help="PNG of F1 against alpha (default f1.png; needs matplotlib)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="the models' dtype (default float32)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
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


def run(args: argparse.Namespace) -> int:
    """Load the models, evaluate every split, print the table, write the JSON and the plot.
    Input problems raise CLIError / ValueError (printed by `tita_ext.cli.main`, exit code 2)."""
    import torch

    from ..cli import DTYPES, CLIError, load_model, load_preprocessors
    from ..setup_checks import check_tokenizers
    from .run_pope import evaluate_pope, format_table, load_questions, write_results

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be at least 1, got {args.limit}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was given but torch sees no CUDA device")
    template = args.template.replace("\\n", "\n")  # a "\n" typed in a shell is a newline
    try:
        template.format(question="?")
    except (KeyError, IndexError, ValueError) as error:
        raise CLIError(f"--template may hold only the field {{question}} (double other braces): {error!r}") from None
    if "{question}" not in template:
        raise CLIError("--template must hold {question}")
    questions = {split: load_questions(path, args.limit) for split, path in split_files(args.data, args.splits).items()}
    pres = load_preprocessors({"base": args.base, "reward": args.reward})
    check_tokenizers(pres["base"].tokenizer, pres["reward"].tokenizer, "reward")
    base = load_model(args.base, pres["base"], DTYPES[args.dtype], args.device)
    reward = load_model(args.reward, pres["reward"], DTYPES[args.dtype], args.device)
    reward_pre = pres["reward"] if pres["reward"].family != pres["base"].family else None
    results = evaluate_pope(base, reward, pres["base"], questions, args.images or args.data, args.alphas,
                            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                            template=template, reward_processor=reward_pre, unparsed=args.unparsed,
                            progress=not args.no_progress)
    print(format_table(results))
    write_results(results, args.out, args.plot)
    print(f"wrote {args.out} and {args.plot} ({results['seconds']:.1f} s)")
    return 0

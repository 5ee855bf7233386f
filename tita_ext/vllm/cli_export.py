"""`tita-ext export-vllm`: one folder that vLLM serves as the TITA composite.

    tita-ext export-vllm --base DIR --reward DIR [--ref DIR] [--alpha 0.6] --out DIR [--overwrite]

Then `vllm.LLM(model=OUT)` or `python -m vllm.entrypoints.openai.api_server --model OUT` (with
`pip install "tita-ext[vllm]"`). No vLLM import here. Input problems raise ValueError, which
`tita_ext.cli.main` prints as `tita-ext: error: ...` with exit code 2.
"""

from __future__ import annotations

import argparse

from .layout import ALPHA_PROCESSOR as PROCESSOR

COMMAND = "export-vllm"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the export-vllm subcommand to `subparsers` (an argparse subparsers action); returns it."""
    parser = subparsers.add_parser(
        COMMAND, help="write a folder that vLLM serves as the TITA composite (base + reward)",
        description="Combine local Hugging Face causal-LM folders that share a tokenizer into one folder that "
                    "vLLM loads (vllm.LLM(model=OUT), or the OpenAI-compatible server) as TitaForCausalLM. "
                    "Requests may set their own alpha with extra_args={'tita_alpha': A} "
                    "(vllm_xargs over REST).")
    parser.add_argument("--base", required=True, metavar="DIR", help="the base model's folder")
    parser.add_argument("--reward", required=True, metavar="DIR", help="the reward model's folder (same tokenizer)")
    parser.add_argument("--ref", metavar="DIR", help="a reference model's folder (default: the base model)")
    parser.add_argument("--alpha", type=float, default=0.6, metavar="A",
                        help="default guidance weight of requests that set none (default 0.6)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write (must not exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    return parser


def run(args: argparse.Namespace) -> int:
    from .export import export_vllm

    out = export_vllm(args.base, args.reward, args.out, ref=args.ref, alpha=args.alpha, overwrite=args.overwrite)
    roles = "base + reward" + (" + ref" if args.ref else "")
    print(f"wrote {out} ({roles}, default alpha {args.alpha:g}); serve it with per-request alpha "
          f"(vllm_xargs {{\"tita_alpha\": A}}):\n"
          f"  python -m vllm.entrypoints.openai.api_server --model {out} --logits-processors {PROCESSOR}\n"
          f"or in Python: vllm.LLM(model={str(out)!r}, logits_processors=[{PROCESSOR!r}])")
    return 0

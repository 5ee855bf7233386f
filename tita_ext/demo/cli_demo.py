"""`tita-ext demo`: the whole story on the built-in world (see story.py).

    tita-ext demo [--out DIR] [--cache-dir DIR | --no-cache] [--results FILE] [--quick] [--seeds N]
                  [--first-seed K]
                  [--jobs N] [--no-progress]
"""

from __future__ import annotations

import argparse
import pathlib

COMMAND = "demo"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the demo subcommand to `subparsers` (an argparse subparsers action); returns it."""
    parser = subparsers.add_parser(
        COMMAND, help="the built-in story: train a base and a reward model, then POPE base vs TITA",
        description="From a base model to an aligned one on a built-in world of coloured shapes (nothing is "
                    "downloaded): a tiny base LLaVA whose training answers taught it to say yes to absent "
                    "companions, a much smaller reward model trained with DPO on labelled preference pairs, and "
                    "POPE on held-out scenes over 5 seeds, base alone vs TITA. The first run trains (about 200 "
                    "CPU seconds a seed); "
                    "trained models are cached, so later runs only evaluate.")
    parser.add_argument("--out", default="tita-demo", metavar="DIR",
                        help="where the POPE data, demo.json and demo.png go (default ./tita-demo)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", metavar="DIR",
                       help="trained models are kept here (default $TITA_EXT_CACHE or ~/.cache/tita_ext, + /demo)")
    cache.add_argument("--no-cache", action="store_true", help="train from scratch and keep nothing")
    parser.add_argument("--results", metavar="FILE", help="also write the summary JSON here "
                                                          "(e.g. benchmarks/results/demo.json)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of every stage in seconds (too little training to mean anything)")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="worker processes of one torch thread each, taking the seeds' stages (base, reward "
                             "model, evaluation) as they become ready (default: one per core); the numbers do not "
                             "depend on it")
    parser.add_argument("--seeds", type=int, metavar="N",
                        help="run N seeds (default: the recipe's, 5; the paired tests need at least 2)")
    parser.add_argument("--first-seed", type=int, metavar="K",
                        help="run seeds K..K+N-1 (default 0), e.g. seeds no recipe choice has looked at")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from .cache import default_cache_dir
    from .recipe import DemoRecipe
    from .story import run_story

    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    if args.first_seed is not None and args.first_seed < 0:
        raise ValueError(f"--first-seed must be at least 0, got {args.first_seed}")
    recipe = DemoRecipe.quick() if args.quick else DemoRecipe()
    if args.seeds is not None or args.first_seed is not None:
        count = len(recipe.seeds) if args.seeds is None else args.seeds
        first = args.first_seed or 0
        recipe = dataclasses.replace(recipe, seeds=tuple(range(first, first + count)))
    cache = None if args.no_cache else pathlib.Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    print("tita-ext demo: TITA on a built-in world of coloured shapes, from training to POPE (no download).")
    print(f"  cache: {cache if cache is not None else 'off'}; output: {args.out}" + (" (quick run)" if args.quick else ""))
    run_story(recipe, pathlib.Path(args.out), cache, progress=not args.no_progress,
              results_json=pathlib.Path(args.results) if args.results else None, jobs=args.jobs)
    return 0

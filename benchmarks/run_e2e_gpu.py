"""End-to-end decode benchmark of the graphed engine: tokens/s and step time of guided decoding
with CUDA graphs vs eager, vs each model alone, vs plain `base_model.generate`.

    python benchmarks/run_e2e_gpu.py                      # every pair -> benchmarks/results/e2e-<gpu>.json + .png
    python benchmarks/run_e2e_gpu.py --quick              # a smoke run (small pair on CUDA / tiny on CPU), temp dir
    python benchmarks/run_e2e_gpu.py --pairs llava-7b-tinyllava-1.1b --batches 1 --reps 5
    python benchmarks/run_e2e_gpu.py --pairs tiny         # the tiny pair on the CPU (graphed paths run eagerly)

Every path decodes exactly --new-tokens tokens per row (default 256, EOS ignored), one image per
row, B in --batches (default 1, 8, 32). Per (pair, B, path): one warm-up call (which captures the
graphs), then --reps timed calls; medians. Row fields:
    tokens_per_s   B * new tokens / whole call (prefill included)
    step_ms        one decode step: the engine's decode loop / (N - 1) (Timings); for
                   hf_generate_base (t_call(N) - t_call(1)) / (N - 1)
    s_per_query    whole call / B
    graphed        whether a CUDA graph was replayed
Per (pair, B) the summary gives the figures the issue asks for: guided_graphed tokens/s over
hf_generate_base, the guided graphed step over base graphed + reward graphed steps, the graphed
vs eager speedup of guided decoding, the overlap's gain, and guidance's cost in seconds per
query. The JSON is rewritten after every row (a run cut short keeps what it measured);
--budget-s stops starting new cases after that many seconds.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # e2e_cases, run_e2e, run_ops_cpu beside this file

import e2e_cases as ec  # noqa: E402
import e2e_gpu_cases as gc_  # noqa: E402
import tita_ext  # noqa: E402
from run_e2e import _op_backend, _transformers_version, available_cores, device_slug  # noqa: E402
from run_ops_cpu import _git_commit, cpu_model  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def time_pair(name: str, device: torch.device, batches: list[int], new_tokens: int, reps: int, mode: str,
              paths: list[str], deadline: float, emit) -> list[dict]:
    """Every (batch, path) of one pair, path by path (one generator alive at a time)."""
    start = time.perf_counter()
    pair = gc_.build_pair(name, device)
    build_s = time.perf_counter() - start
    inputs = {b: pair.make_inputs(b) for b in batches}
    prompt = max(int(x["input_ids"].shape[1]) for x in inputs.values())
    runner = gc_.Paths(pair, max(batches), -(-(prompt + new_tokens) // 64) * 64)
    info = dict(pair.describe, device=str(pair.device), dtype=str(pair.dtype).split(".")[-1],
                build_s=round(build_s, 2), prompt_length=prompt)
    rows = []
    for path in paths:
        for batch in batches:
            if time.perf_counter() > deadline:
                emit(None, dict(pair=name, batch=batch, path=path, reason="time budget spent"), info)
                continue
            warm = runner.run(path, inputs[batch], new_tokens, mode, seed=0)
            if tuple(warm.tokens.shape) != (batch, new_tokens):
                raise RuntimeError(f"{name} B={batch} {path}: made {tuple(warm.tokens.shape)} new tokens, "
                                   f"expected {(batch, new_tokens)}")
            capture_s = runner.capture_s(path, batch)
            runs = [runner.run(path, inputs[batch], new_tokens, mode, seed=r + 1) for r in range(reps)]
            call_s = _median([r.call_s for r in runs])
            step_s = _median([r.step_s for r in runs])
            if path == "hf_generate_base":
                first = _median([runner.hf_first_token_s(inputs[batch]) for _ in range(reps)])
                step_s = (call_s - first) / (new_tokens - 1)
            row = dict(pair=name, batch=batch, path=path, tokens_per_s=round(batch * new_tokens / call_s, 2),
                       step_ms=round(step_s * 1e3, 4), s_per_query=round(call_s / batch, 5),
                       call_ms=round(call_s * 1e3, 3), graphed=runs[0].graphed, reps=reps,
                       call_ms_all=[round(r.call_s * 1e3, 3) for r in runs],
                       capture_s=None if capture_s is None else round(capture_s, 3))
            rows.append(row)
            emit(row, None, info)
        runner.close()
    runner.close()
    del runner, pair
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (pair, batch): the issue's ratios, where the paths they need were measured."""
    by = {(r["pair"], r["batch"], r["path"]): r for r in rows}
    out = []
    for pair, batch in sorted({(r["pair"], r["batch"]) for r in rows}):
        get = lambda path, key: by[(pair, batch, path)][key] if (pair, batch, path) in by else None  # noqa: E731
        s = dict(pair=pair, batch=batch)
        g_tps, hf_tps = get("guided_graphed", "tokens_per_s"), get("hf_generate_base", "tokens_per_s")
        g_step, b_step, r_step = get("guided_graphed", "step_ms"), get("base_graphed", "step_ms"), \
            get("reward_graphed", "step_ms")
        e_step, o_step = get("guided_eager", "step_ms"), get("guided_graphed_overlap", "step_ms")
        if g_tps and hf_tps:
            s["guided_graphed_over_hf_generate_tokens_per_s"] = round(g_tps / hf_tps, 3)
        if g_step and b_step and r_step:
            s["guided_step_over_base_plus_reward_steps"] = round(g_step / (b_step + r_step), 3)
        if g_step and b_step:
            s["guided_step_over_base_step"] = round(g_step / b_step, 3)
        if g_step and e_step:
            s["graphed_speedup_guided_step"] = round(e_step / g_step, 3)
        if g_tps and get("guided_eager", "tokens_per_s"):
            s["graphed_speedup_guided_tokens_per_s"] = round(g_tps / get("guided_eager", "tokens_per_s"), 3)
        if g_step and o_step:
            s["overlap_step_gain"] = round(1 - o_step / g_step, 4)
        g_q, b_q, hf_q = get("guided_graphed", "s_per_query"), get("base_graphed", "s_per_query"), \
            get("hf_generate_base", "s_per_query")
        if g_q and b_q:
            s["guidance_s_per_query_vs_base_graphed"] = round(g_q - b_q, 5)
        if g_q and hf_q:
            s["guidance_s_per_query_vs_hf_generate"] = round(g_q - hf_q, 5)
        out.append(s)
    return out


def markdown_table(result: dict) -> str:
    """The README table: per (pair, B) tokens/s of each path, the guided step against the two
    models' graphed steps, the graph speedup, and guidance's cost in seconds per query."""
    by = {(r["pair"], r["batch"], r["path"]): r for r in result["rows"]}
    summary = {(s["pair"], s["batch"]): s for s in result["summary"]}
    head = ("| pair | B | `generate` tok/s | base graphed | guided eager | guided graphed | graphed / `generate` | "
            "guided step ms | base + reward steps ms | ratio | graphed vs eager | s/query guided | "
            "guidance s/query |")
    lines = [head, "|" + "---|" * 2 + "---:|" * (head.count("|") - 3)]
    cell = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    for (pair, batch), s in sorted(summary.items()):
        get = lambda path, key: by.get((pair, batch, path), {}).get(key)  # noqa: E731
        b_step, r_step = get("base_graphed", "step_ms"), get("reward_graphed", "step_ms")
        lines.append("| " + " | ".join([
            pair, str(batch), cell(get("hf_generate_base", "tokens_per_s"), ",.0f"),
            cell(get("base_graphed", "tokens_per_s"), ",.0f"), cell(get("guided_eager", "tokens_per_s"), ",.0f"),
            cell(get("guided_graphed", "tokens_per_s"), ",.0f"),
            cell(s.get("guided_graphed_over_hf_generate_tokens_per_s"), ".2f") + "x",
            cell(get("guided_graphed", "step_ms"), ".2f"),
            cell(b_step + r_step if b_step and r_step else None, ".2f"),
            cell(s.get("guided_step_over_base_plus_reward_steps"), ".3f"),
            cell(s.get("graphed_speedup_guided_step"), ".2f") + "x",
            cell(get("guided_graphed", "s_per_query"), ".3f"),
            cell(s.get("guidance_s_per_query_vs_base_graphed"), "+.3f")]) + " |")
    return "\n".join(lines)


def plot(result: dict, path: str) -> str | None:
    """Grouped bars of tokens/s (log scale) per pair: one group per batch, one bar per path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    rows = result["rows"]
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    if not pairs:
        return None
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.5), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        mine = [r for r in rows if r["pair"] == pair]
        batches = sorted({r["batch"] for r in mine})
        paths = [p for p in gc_.PATHS if any(r["path"] == p for r in mine)]
        width = 0.8 / max(len(paths), 1)
        for i, p in enumerate(paths):
            values = [next((r["tokens_per_s"] for r in mine if r["batch"] == b and r["path"] == p), 0) for b in batches]
            ax.bar([j + i * width for j in range(len(batches))], values, width, label=p)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))], [f"B={b}" for b in batches])
        ax.set_yscale("log")
        ax.set_ylabel("tokens/s (prefill included)")
        info = result["pairs"].get(pair, {})
        ax.set_title(f"{pair} ({info.get('device', '?')}, {info.get('dtype', '?')})", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['device_name']}: {result['new_tokens']} new tokens per row, torch {result['torch']}, "
                 f"transformers {result['transformers']}", fontsize=9)
    fig.tight_layout()
    from tita_ext.safe_write import atomic_file  # crash-safe: the old plot stays until the new one is whole
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small pair on CUDA (tiny on the CPU), B 1 and 8, 32 new tokens, 2 reps, "
                             "JSON to a temp dir")
    parser.add_argument("--pairs", help=f"comma-separated: {', '.join(gc_.GPU_PAIRS)}, tiny "
                                        "(default: all that can run here)")
    parser.add_argument("--batches", help="comma-separated batch sizes (default 1,8,32)")
    parser.add_argument("--paths", help=f"comma-separated subset of {', '.join(gc_.PATHS)}")
    parser.add_argument("--new-tokens", type=int, help="tokens per row (default 256; 32 with --quick)")
    parser.add_argument("--reps", type=int, help="timed calls per case (default 3; 2 with --quick)")
    parser.add_argument("--mode", choices=list(ec.MODES), default="greedy", help="sampling mode (default greedy)")
    parser.add_argument("--budget-s", type=float, default=float("inf"),
                        help="stop starting new cases after this many seconds (default: no limit)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: the cores available)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/e2e-<device>.json; temp with --quick)")
    parser.add_argument("--table", metavar="JSON", help="print the README table of a results file and exit")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --out (same device), replacing those measured again: "
                             "run the pairs in separate commands into one file")
    args = parser.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(markdown_table(json.load(f)))
        return 0
    new_tokens = args.new_tokens or (32 if args.quick else 256)
    reps = args.reps or (2 if args.quick else 3)
    if new_tokens < 2 or reps < 1:
        parser.error("--new-tokens must be >= 2 and --reps >= 1")
    torch.set_num_threads(args.threads or available_cores())
    cuda = torch.cuda.is_available()
    device = torch.device("cuda") if cuda else torch.device("cpu")
    if args.pairs:
        pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
        unknown = [p for p in pairs if p not in gc_.PAIRS and p != "tiny"]
        if unknown:
            parser.error(f"unknown pair(s) {unknown}; known: {', '.join(gc_.GPU_PAIRS)}, tiny")
        if not cuda and any(p != "tiny" for p in pairs):
            parser.error("only the tiny pair runs without CUDA")
    else:
        pairs = (["small-0.5b-0.1b"] if args.quick else list(gc_.GPU_PAIRS) + ["tiny"]) if cuda else ["tiny"]
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([1, 8] if args.quick else [1, 8, 32])
    if any(b < 1 for b in batches):
        parser.error("batch sizes must be >= 1")
    all_paths = [p.strip() for p in args.paths.split(",")] if args.paths else list(gc_.PATHS)
    bad = [p for p in all_paths if p not in gc_.PATHS]
    if bad:
        parser.error(f"unknown path(s) {bad}; known: {', '.join(gc_.PATHS)}")

    slug = device_slug(device)
    default_dir = tempfile.gettempdir() if args.quick else RESULTS_DIR
    out_path = args.out or os.path.join(default_dir, f"e2e-{slug}{'-quick' if args.quick else ''}.json")
    device_name = torch.cuda.get_device_name(device) if cuda else cpu_model()
    result = dict(
        device=slug, device_name=device_name, machine_description=f"{cpu_model()}, {platform.platform()}",
        torch=torch.__version__, transformers=_transformers_version(), tita_ext=tita_ext.__version__,
        cuda=torch.version.cuda if cuda else None, python=platform.python_version(), git_commit=_git_commit(),
        threads=torch.get_num_threads(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), quick=args.quick,
        new_tokens=new_tokens, reps=reps, mode=mode_doc(args.mode), alpha=ec.ALPHA, sync_every=gc_.SYNC_EVERY,
        op_backend={"cuda": _op_backend(device) if cuda else None, "cpu": _op_backend(torch.device("cpu"))},
        paths_doc=gc_.__doc__.strip(), method_doc=__doc__.strip(), pairs={}, rows=[], summary=[], skipped=[])
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    kept: list[dict] = []
    if args.append and os.path.exists(out_path):
        with open(out_path) as f:
            old = json.load(f)
        if old.get("device") != slug:
            parser.error(f"--append: {out_path} holds results of {old.get('device')}, not {slug}")
        kept = old.get("rows", [])
        result["pairs"].update(old.get("pairs", {}))
        result["appended_to"] = dict(date=old.get("date"), git_commit=old.get("git_commit"))

    new_rows: list[dict] = []

    def write():
        measured = {(r["pair"], r["batch"], r["path"]) for r in new_rows}
        result["rows"] = [r for r in kept if (r["pair"], r["batch"], r["path"]) not in measured] + new_rows
        result["summary"] = summarize(result["rows"])
        from tita_ext.safe_write import write_json  # crash-safe: temp file, fsync, rename
        write_json(out_path, result, indent=1)

    def emit(row, skipped, info):
        if info is not None:
            result["pairs"][(row or skipped)["pair"]] = info
        if row is not None:
            new_rows.append(row)
            print(f"{row['pair']:<26}{row['batch']:>4}  {row['path']:<24}{row['tokens_per_s']:>12,.1f}"
                  f"{row['step_ms']:>11.3f}{row['s_per_query']:>11.4f}  {'graph' if row['graphed'] else 'eager'}",
                  flush=True)
        else:
            result["skipped"].append(skipped)
        write()

    print(f"{slug}: {device_name}, torch {torch.__version__}, transformers {_transformers_version()}; "
          f"{new_tokens} new tokens per row, {reps} reps, {args.mode}")
    print(f"{'pair':<26}{'B':>4}  {'path':<24}{'tokens/s':>12}{'step ms':>11}{'s/query':>11}")
    deadline = time.perf_counter() + args.budget_s
    for name in pairs:
        pair_device = torch.device("cpu") if name == "tiny" else device
        paths = [p for p in all_paths if pair_device.type == "cuda" or p in gc_.CPU_PATHS]
        time_pair(name, pair_device, batches, new_tokens, reps, args.mode, paths, deadline, emit)
        gc.collect()  # the pair's models and caches go before the next pair is built
        if cuda:
            torch.cuda.empty_cache()
    write()
    print()
    print(markdown_table(result))
    png = plot(result, os.path.splitext(out_path)[0] + ".png")
    if png:
        result["plot"] = os.path.basename(png)
        write()
    print(f"\nwrote {out_path}" + (f" and {png}" if png else ""))
    return 0


def mode_doc(mode: str) -> dict:
    return dict(name=mode, **ec.MODES[mode])


if __name__ == "__main__":
    sys.exit(main())

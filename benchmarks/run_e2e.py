"""End-to-end decode benchmark: guided vs base-only vs generate, and the guidance overhead.

    python benchmarks/run_e2e.py            # every case -> benchmarks/results/e2e-<device>.json
    python benchmarks/run_e2e.py --quick    # B=1 and 8, few reps -> a temp file (unless --out is given)
    python benchmarks/run_e2e.py --cases 'tiny-b8-*' --new-tokens 32 --reps 7

Per case (model pair, batch B, greedy or sampling) every variant of e2e_cases.py decodes exactly
--new-tokens tokens per row: warmed up once, then timed in interleaved rounds (the order rotates).
Reported: medians over rounds of tokens/s (B * new tokens / whole call, prefill included) and of
decode-loop milliseconds per step, the ratios guided/base_only and guided/generate, and the
guidance overhead: the share of a guided decode step spent outside the two models' forwards,
1 - t_forwards / t_step, with t_step the guided loop's median time per step and t_forwards the
median time per step of the same forwards alone (same batch, tokens and cache growth).
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import os
import platform
import re
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # e2e_cases, run_ops_cpu beside this file

import e2e_cases as ec  # noqa: E402
import tita_ext  # noqa: E402
from run_ops_cpu import _git_commit, cpu_model, machine_slug  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TIMED = ("guided", "base_only", "generate", "forwards")
OVERHEAD_DEFINITION = (
    "share = 1 - t_forwards / t_step. t_step: guided_generate's decode loop (Timings.decode_s: N fused-op "
    "calls, N-1 steps of both models' forwards, the loop's bookkeeping and per-step host read) / N. "
    "t_forwards: the same N-1 pairs of forwards alone / N, each called as ModelRunner.step calls it "
    "(runner.model(input_ids=, attention_mask=, past_key_values=, use_cache=True[, position_ids=])) "
    "with arguments prepared before the timer, same tokens and cache growth, no per-step sync. "
    "The runner's own Python (mask slicing, position update, logits slicing) therefore counts as "
    "overhead. outside_forward_us = (t_step - t_forwards) in microseconds. Medians over rounds; "
    "share_paired_median: the median over rounds of 1 - forwards / guided within each round. "
    "share_inside_median (CPU): the same split measured inside each guided call, timing every model "
    "call with forward hooks on the same steps (immune to drift between separate loops; the hooks' "
    "dispatch counts as overhead); outside_forward_us_inside_median is its time per step.")


def device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        words = re.findall(r"[a-z0-9]+", torch.cuda.get_device_name(device).lower())
        return "gpu-" + "-".join(w for w in words if w != "nvidia")[:40]
    return machine_slug()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def case_list(cuda: bool, quick: bool) -> list[dict]:
    """Every case: tiny on the CPU at B 1/8/32 (quick: 1/8); real-architecture at B 1/8 on CUDA."""
    cases = []
    for batch in (1, 8) if quick else (1, 8, 32):
        for mode in ec.MODES:
            cases.append(dict(name=f"tiny-b{batch}-{mode}", pair="tiny", batch=batch, mode=mode))
    for batch in (1, 8):
        for mode in ec.MODES:
            cases.append(dict(name=f"real-b{batch}-{mode}", pair="real", batch=batch, mode=mode,
                              needs_cuda=True, runnable=cuda))
    return cases


def _ms(seconds: list[float], per: int) -> list[float]:
    return [round(s * 1e3 / per, 4) for s in seconds]


def time_case(pair: ec.Pair, case: dict, new_tokens: int, reps: int) -> dict:
    """Warm up each variant once, then `reps` interleaved rounds; medians and the overhead."""
    batch, mode = case["batch"], case["mode"]
    inputs = pair.make_inputs(batch)
    warm = {name: fn(pair, inputs, mode, new_tokens, seed=0) for name, fn in ec.VARIANTS.items()}
    for name, run in warm.items():  # every variant must decode exactly new_tokens per row
        if tuple(run.tokens.shape) != (batch, new_tokens):
            raise RuntimeError(f"{case['name']}: {name} made {tuple(run.tokens.shape)} new tokens, "
                               f"expected {(batch, new_tokens)}")
    guided_tokens = warm["guided"].tokens
    ec.run_forwards(pair, inputs, guided_tokens)  # warm-up

    runs: dict[str, list[ec.Run]] = {name: [] for name in TIMED}
    for r in range(reps):
        order = TIMED[r % len(TIMED):] + TIMED[:r % len(TIMED)]
        for name in order:
            if name == "forwards":
                runs[name].append(ec.run_forwards(pair, inputs, guided_tokens))
            else:
                runs[name].append(ec.VARIANTS[name](pair, inputs, mode, new_tokens, seed=r + 1))

    variants = {}
    for name, got in runs.items():
        call = [run.call_s for run in got]
        row = dict(call_ms=_ms(call, 1), median_call_ms=round(statistics.median(call) * 1e3, 3))
        if name != "forwards":
            row["median_tokens_per_s"] = round(batch * new_tokens / statistics.median(call), 2)
        if got[0].decode_s is not None:
            decode = [run.decode_s for run in got]
            row["decode_step_ms"] = _ms(decode, new_tokens)
            row["median_decode_step_ms"] = round(statistics.median(decode) * 1e3 / new_tokens, 4)
        variants[name] = row

    # The same split measured inside each guided call (CPU: forward hooks), paired step for step.
    splits = [ec.run_guided_split(pair, inputs, mode, new_tokens, seed=r + 1) for r in range(reps)] \
        if pair.device.type == "cpu" else []
    inside = [1 - sp.forwards_s / sp.decode_s for sp in splits]
    inside_us = [(sp.decode_s - sp.forwards_s) * 1e6 / new_tokens for sp in splits]
    t_step = variants["guided"]["median_decode_step_ms"]
    t_fwd = variants["forwards"]["median_decode_step_ms"]
    paired = [1 - f.decode_s / g.decode_s for g, f in zip(runs["guided"], runs["forwards"])]
    tps = {name: variants[name]["median_tokens_per_s"] for name in ec.VARIANTS}
    return dict(
        case, new_tokens=new_tokens, reps=reps, prompt_length=int(inputs["input_ids"].shape[1]),
        sampling=dict(ec.MODES[mode], alpha=ec.ALPHA), variants=variants,
        ratios=dict(guided_over_base_only=round(tps["guided"] / tps["base_only"], 4),
                    guided_over_generate=round(tps["guided"] / tps["generate"], 4),
                    base_only_over_generate=round(tps["base_only"] / tps["generate"], 4)),
        overhead=dict(share=round(1 - t_fwd / t_step, 4), outside_forward_us=round((t_step - t_fwd) * 1e3, 1),
                      t_step_ms=t_step, t_forwards_ms=t_fwd, share_paired_median=round(statistics.median(paired), 4),
                      forward_calls="runner.model(...) directly, ModelRunner.step's arguments",
                      share_inside_median=round(statistics.median(inside), 4) if inside else None,
                      outside_forward_us_inside_median=round(statistics.median(inside_us), 1) if inside else None,
                      share_inside=[round(x, 4) for x in inside]))


def _row(res: dict) -> str:
    ratios, over = res["ratios"], res["overhead"]
    tps = "".join(f"{res['variants'][name]['median_tokens_per_s']:>10,.0f}" for name in ec.VARIANTS)
    return (f"{res['name']:<18}{tps}{ratios['guided_over_base_only']:>9.2f}x"
            f"{ratios['guided_over_generate']:>9.2f}x{over['t_step_ms']:>9.3f}{over['t_forwards_ms']:>9.3f}"
            f"{over['share'] * 100:>8.1f}%{over['outside_forward_us']:>9.0f}{_inside(over)}")


def _inside(over: dict) -> str:
    if over["share_inside_median"] is None:
        return f"{'-':>9}{'-':>9}"
    return f"{over['share_inside_median'] * 100:>8.1f}%{over['outside_forward_us_inside_median']:>9.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B=1 and 8 only (unless --cases), 2 rounds; JSON to a temp dir")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/e2e-<device>.json; temp with --quick)")
    parser.add_argument("--cases", help="comma-separated case names or globs, e.g. 'tiny-b1-greedy,tiny-b8-*'")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per row (default 64)")
    parser.add_argument("--reps", type=int, help="timed rounds per variant (default 9; 2 with --quick)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: the cores available)")
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2")
    reps = args.reps or (2 if args.quick else 9)
    threads = args.threads or available_cores()
    torch.set_num_threads(threads)

    cuda = torch.cuda.is_available()
    cases = case_list(cuda, args.quick and not args.cases)  # --cases picks from every case
    if args.cases:
        patterns = [p.strip() for p in args.cases.split(",") if p.strip()]
        cases = [c for c in cases if any(fnmatch.fnmatch(c["name"], p) for p in patterns)]
        if not cases:
            names = ", ".join(c["name"] for c in case_list(True, False))
            parser.error(f"no case matches {args.cases!r}; names: {names}")

    device = torch.device("cuda") if cuda else torch.device("cpu")
    slug = device_slug(device)
    default_dir = tempfile.gettempdir() if args.quick else RESULTS_DIR
    out_path = args.out or os.path.join(default_dir, f"e2e-{slug}{'-quick' if args.quick else ''}.json")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load > 0.5 * available_cores():
        print(f"warning: load average {load:.1f} on {available_cores()} cores: other work will distort the timings "
              "(with more threads than free cores, --threads 1 avoids the worst of it)")
    device_name = torch.cuda.get_device_name(device) if cuda else cpu_model()
    print(f"{slug}: {device_name}, torch {torch.__version__} ({threads} threads), transformers "
          f"{_transformers_version()}, tita_ext {tita_ext.__version__}; {args.new_tokens} new tokens per row, "
          f"alpha {ec.ALPHA}, {reps} rounds, medians")
    print(f"{'case':<18}{'guided':>10}{'base':>10}{'generate':>10}{'g/base':>10}{'g/gen':>10}"
          f"{'step ms':>9}{'fwd ms':>9}{'overhd':>9}{'us/step':>9}{'inside':>9}{'us/step':>9}")
    print(f"{'':<18}{'tok/s':>10}{'tok/s':>10}{'tok/s':>10}")

    pairs, results, skipped, pair_info = {}, [], [], {}
    for case in cases:
        if case.get("needs_cuda") and not case["runnable"]:
            skipped.append(dict(name=case["name"], reason="needs a CUDA device (none here)"))
            continue
        if case["pair"] not in pairs:
            start = time.perf_counter()
            pairs[case["pair"]] = ec.tiny_pair() if case["pair"] == "tiny" else ec.real_pair(device)
            pair = pairs[case["pair"]]
            pair_info[case["pair"]] = dict(pair.describe, device=str(pair.device),
                                           dtype=str(pair.dtype).split(".")[-1],
                                           build_s=round(time.perf_counter() - start, 2))
        res = time_case(pairs[case["pair"]], {k: v for k, v in case.items() if k not in ("needs_cuda", "runnable")},
                        args.new_tokens, reps)
        results.append(res)
        print(_row(res), flush=True)
    for s in skipped:
        print(f"{s['name']:<18}skipped: {s['reason']}")

    result = dict(
        device=slug, device_name=device_name, machine_description=f"{cpu_model()}, {platform.platform()}",
        cpu_count=os.cpu_count(), available_cores=available_cores(), threads=torch.get_num_threads(),
        torch=torch.__version__, transformers=_transformers_version(), tita_ext=tita_ext.__version__,
        cuda=torch.version.cuda if cuda else None, python=platform.python_version(), git_commit=_git_commit(),
        load_average_at_start=load, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        quick=args.quick, new_tokens=args.new_tokens, reps=reps, alpha=ec.ALPHA, modes=ec.MODES,
        op_backend=_op_backend(device), pairs=pair_info, overhead_definition=OVERHEAD_DEFINITION,
        variants_doc=ec.__doc__.strip(), cases=results, skipped=skipped)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    from tita_ext.safe_write import write_json  # crash-safe: temp file, fsync, rename
    write_json(out_path, result, indent=1)
    print(f"\nwrote {out_path}")
    return 0


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _op_backend(device: torch.device) -> str:
    """The fused op backend guided_generate picks here (backend=None)."""
    try:
        from tita_ext.ops import _resolve_backend

        return str(_resolve_backend(None, device))
    except Exception as exc:  # private helper: record, do not fail the benchmark
        return f"unknown ({type(exc).__name__})"


if __name__ == "__main__":
    sys.exit(main())

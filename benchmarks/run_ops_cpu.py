"""Time the fused CPU op side by side with its baselines, write JSON, print the ratios.

    python benchmarks/run_ops_cpu.py            # full grid -> benchmarks/results/ops-<machine>.json
    python benchmarks/run_ops_cpu.py --quick    # small grid -> a temp file (unless --out is given)
    python benchmarks/run_ops_cpu.py --quick --threads 1 --save   # -> results/ops-<machine>-t1.json
    TITA_EXT_CPU_CAPABILITY=avx2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/run_ops_cpu.py ...
                                                # as on an AVX2-only machine (file name gains -avx2)

Per grid point (B, V, mode) every implementation (see impls.py) is warmed up (torch.compile
compiles here), then timed in interleaved rounds (the order rotates), so all share the machine's
state. Every timed call starts from a set cache state (cases.prepare_caches): "warm" (the inputs
just read, as after the model wrote them: the headline) and "cold" (everything evicted). The
reported figure is the median over rounds of microseconds per call (time.perf_counter_ns).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `cases`, `impls` beside this file

import cases  # noqa: E402
import tita_ext  # noqa: E402
from impls import ALPHA, IMPLS, MODE_PARAMS  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_slug() -> str:
    """A short file-name-safe machine name, e.g. cpu-amd-epyc-2c."""
    name = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*", " ", cpu_model().lower())
    words = re.findall(r"[a-z0-9]+", name)
    return f"cpu-{'-'.join(words)[:40] or 'unknown'}-{os.cpu_count()}c"


def capabilities() -> dict[str, str]:
    """The instruction sets in use: tita_ext's CPU kernels and ATen's (torch's) kernels."""
    from tita_ext import _C

    return {"tita": _C.build_info().get("cpu_capability", "unknown"),
            "torch": torch.backends.cpu.get_cpu_capability().lower()}


def result_name(machine: str, threads: int | None, quick: bool) -> str:
    """ops-<machine>[-t<threads>][-<capability>][-quick].json; the capability only when an
    environment variable lowered it (TITA_EXT_CPU_CAPABILITY / ATEN_CPU_CAPABILITY)."""
    lowered = os.environ.get("TITA_EXT_CPU_CAPABILITY") or os.environ.get("ATEN_CPU_CAPABILITY")
    return (f"ops-{machine}{f'-t{threads}' if threads else ''}{f'-{lowered}' if lowered else ''}"
            f"{'-quick' if quick else ''}.json")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}


def time_point(batch: int, vocab: int, mode: str, impls: list[str], budget_s: float,
               min_rounds: int, max_rounds: int, cache: str, clock=time.perf_counter_ns) -> dict[str, dict]:
    """{impl: {"median_us", "rounds"} or {"error"}} for one grid point, timed with `clock`."""
    base, reward = cases.logits(batch, vocab)
    seed = cases.seed_tensor()
    est, errors = {}, {}
    for name in impls:
        try:
            IMPLS[name](base, reward, mode, seed)  # warm-up (compiles the torch.compile impl)
            start = time.perf_counter_ns()
            IMPLS[name](base, reward, mode, seed)
            est[name] = max(time.perf_counter_ns() - start, 1) * 1e-9
        except Exception as exc:  # record (torch.compile may be unusable here), keep going
            errors[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    live = [n for n in impls if n in est]
    round_s = sum(est[n] + 0.004 for n in live) or 1e-3  # ~4 ms per cache preparation
    rounds = min(max_rounds, max(min_rounds, int(budget_s / round_s)))
    samples: dict[str, list[float]] = {n: [] for n in live}
    for r in range(rounds if live else 0):
        for n in live[r % len(live):] + live[:r % len(live)]:  # rotate who goes first
            cases.prepare_caches(cache, base, reward)
            start = clock()
            IMPLS[n](base, reward, mode, seed)
            samples[n].append((clock() - start) / 1e3)
    out = {n: {"error": e} for n, e in errors.items()}
    out.update({n: {"median_us": round(statistics.median(samples[n]), 2), "rounds": rounds} for n in live})
    return out


def _ratio(rows: dict, num: str, den: str) -> float | None:
    a, b = rows.get(num, {}).get("median_us"), rows.get(den, {}).get("median_us")
    return round(a / b, 2) if a and b else None


def _fmt(x: float | None, suffix: str = "") -> str:
    return "-" if x is None else (f"{x:.1f}{suffix}" if x < 100 else f"{x:,.0f}{suffix}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the two headline points only (B=8 x V=32000, B=64 x V=151936), few rounds")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/ops-<machine>.json; temp with --quick)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (all its threads), steadier on a "
                             "shared machine and equal to the elapsed time of an undisturbed --threads 1 run")
    parser.add_argument("--save", action="store_true", help="with --quick: write to benchmarks/results, not a temp dir")
    parser.add_argument("--caches", default=",".join(cases.CACHE_STATES),
                        help="cache states to measure, comma-separated (default: warm,cold)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    machine = machine_slug()
    default_dir = tempfile.gettempdir() if args.quick and not args.save else RESULTS_DIR
    out_path = args.out or os.path.join(default_dir, result_name(machine, args.threads, args.quick))
    caps = capabilities()
    budget, min_rounds, max_rounds = (0.3, 5, 15) if args.quick else (2.0, 9, 60)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other work will distort the timings")
    print(f"{machine}: {cpu_model()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"tita_ext {tita_ext.__version__}; instruction sets: tita {caps['tita']}, torch {caps['torch']}; "
          f"median {args.clock} us per call, fp32, alpha {ALPHA}")
    header = f"{'mode':<10}{'B':>4}{'V':>8}" + "".join(f"{n:>11}" for n in cases.IMPLS)

    rows, ratios = [], []
    for cache in [c for c in args.caches.split(",") if c]:
        if cache not in cases.CACHE_STATES:
            parser.error(f"--caches: unknown cache state {cache!r} (choose from {', '.join(cases.CACHE_STATES)})")
        print(f"\ncaches {cache}:")
        print(header + f"{'eager/tita':>12}{'topk/tita':>11}{'comp/tita':>11}{'lse/tita':>10}")
        for batch, vocab in cases.shapes(args.quick):
            for mode in cases.MODES:
                impls = [n for n in cases.IMPLS if cases.wanted(n, batch, vocab, mode, args.quick)]
                point = time_point(batch, vocab, mode, impls, budget, min_rounds, max_rounds, cache,
                                   CLOCKS[args.clock])
                for name, res in point.items():
                    rows.append(dict(impl=name, batch=batch, vocab=vocab, dtype="float32", mode=mode, cache=cache, **res))
                r = dict(cache=cache, mode=mode, batch=batch, vocab=vocab,
                         eager_over_tita=_ratio(point, "eager", "tita"),
                         eager_topk_over_tita=_ratio(point, "eager_topk", "tita"),
                         compile_over_tita=_ratio(point, "compile", "tita"),
                         logsumexp_over_tita=_ratio(point, "logsumexp", "tita"))
                ratios.append(r)
                cells = "".join(f"{_fmt(point.get(n, {}).get('median_us')):>11}" for n in cases.IMPLS)
                print(f"{mode:<10}{batch:>4}{vocab:>8}{cells}{_fmt(r['eager_over_tita'], 'x'):>12}"
                      f"{_fmt(r['eager_topk_over_tita'], 'x'):>11}{_fmt(r['compile_over_tita'], 'x'):>11}{_fmt(r['logsumexp_over_tita'], 'x'):>10}", flush=True)
                for name, res in point.items():
                    if "error" in res:
                        print(f"    {name} failed: {res['error']}")

    print("\nHeadline (topk_topp: T 0.7, top-k 50, top-p 0.9; topp: top-p 0.9 alone; targets eager/tita >= 10x, "
          "logsumexp/tita >= 1x):")
    for r in ratios:
        if r["mode"] in ("topk_topp", "topp") and (r["batch"], r["vocab"]) in cases.HEADLINE_SHAPES:
            e, l = r["eager_over_tita"], r["logsumexp_over_tita"]
            verdict = "ok" if e and l and e >= 10 and l >= 1 else "MISSES TARGET"
            print(f"  {r['mode']:<9} caches {r['cache']:<5} B={r['batch']:<3} V={r['vocab']:<7} eager/tita "
                  f"{_fmt(e, 'x'):>7}   eager_topk/tita {_fmt(r['eager_topk_over_tita'], 'x'):>6}   "
                  f"logsumexp/tita {_fmt(l, 'x'):>6}   {verdict}")

    result = dict(
        machine=machine, machine_description=f"{cpu_model()}, {platform.platform()}", cpu_count=os.cpu_count(),
        threads=torch.get_num_threads(), capabilities=caps, clock=args.clock, torch=torch.__version__, tita_ext=tita_ext.__version__,
        python=platform.python_version(), git_commit=_git_commit(), load_average_at_start=load,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), quick=args.quick,
        alpha=ALPHA, modes=MODE_PARAMS, caches=cases.prepare_caches.__doc__.strip(),
        rows=rows, ratios=ratios)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    from tita_ext.safe_write import write_json  # crash-safe: temp file, fsync, rename
    write_json(out_path, result, indent=1)
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

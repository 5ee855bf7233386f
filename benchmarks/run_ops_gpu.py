"""Time the fused op on a GPU side by side with its baselines; write JSON and a PNG.

    python benchmarks/run_ops_gpu.py              # full grid -> benchmarks/results/ops-<gpu>.json (+ .png)
    python benchmarks/run_ops_gpu.py --quick      # the acceptance points, few reps (JSON to a temp dir)
    python benchmarks/run_ops_gpu.py --dry-run    # print the grid; needs no GPU
    python benchmarks/run_ops_gpu.py --batches 1,8 && python benchmarks/run_ops_gpu.py --batches 64,256 --append
                                                  # the grid in pieces (each command under 10 minutes)

Grid: B in {1, 8, 64, 256} x V in {32064, 128256, 151936} x {bf16, fp32} x {greedy, sample,
topk_topp (T 0.7, k 50, p 0.9)} x {two inputs, three inputs}; implementations (gpu_impls.py):
tita_cuda, triton, eager, compile, flashinfer_sampler (FlashInfer's sampler alone on a row combined
beforehand), combine_flashinfer (one combine of the raw logits + FlashInfer's sampler: the fused
alternative a user would build); FlashInfer when importable, otherwise the JSON says why.

Timing, per sample: the L2 cache is flushed by reading (a sum over a buffer twice its size: no
dirty lines are left to be written back inside the timed call), the GPU is kept busy a while
(torch.cuda._sleep) so that the host has enqueued everything before the timed work starts, then
CUDA events bracket one replay of a CUDA graph holding one call (median_us: device time, no host
overhead, also at B=1). An implementation that cannot be captured is timed as one eager call
between the events (timing "eager" in its row). eager_us: the median wall time of an eager call
from the host (dispatch, launches, and the device until done), what one un-graphed decode step
pays. Every implementation of a point is interleaved round by round. gbps = bytes of logits read
(every input, once) / median_us; peak_gbps is the device's memory bandwidth from its name (H100
SXM 3350, H200 4800, ...), next to a measured device-to-device copy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `gpu_impls`, `impls`, `plot_ops` beside this file

from impls import ALPHA, MODE_PARAMS  # noqa: E402
from run_ops_cpu import _git_commit  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BATCHES = (1, 8, 64, 256)
VOCABS = (32064, 128256, 151936)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MODES = ("greedy", "sample", "topk_topp")
INPUTS = (2, 3)
IMPL_NAMES = ("tita_cuda", "triton", "eager", "compile", "flashinfer_sampler", "combine_flashinfer")
QUICK_POINTS = ((1, 32064), (64, 151936))  # the acceptance points: <= 10 us, >= 70% of peak (topk_topp)

# Memory bandwidth in GB/s by device name (vendor figures), most specific first.
PEAK_GBPS = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIE", 2000.0),
    ("H100", 3350.0),  # SXM5, "NVIDIA H100 80GB HBM3"
    ("GH200", 4000.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIE", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("L4", 300.0),
)


def peak_gbps(name: str) -> float | None:
    """The vendor memory bandwidth of a device by its name, or None when unknown."""
    upper = name.upper()
    for key, value in PEAK_GBPS:
        if key in upper:
            return value
    return None


def gpu_slug(name: str) -> str:
    """A file-name-safe device name: 'NVIDIA H100 80GB HBM3' -> 'gpu-nvidia-h100-80gb-hbm3'."""
    return "gpu-" + ("-".join(re.findall(r"[a-z0-9]+", name.lower()))[:40] or "unknown")


def grid(quick: bool, only: dict | None = None) -> list[dict]:
    """The measured points: dicts of batch, vocab, dtype, mode, inputs; `only` keeps the points
    whose values are in its lists (e.g. {"batch": [1, 8]}), to run the grid in pieces."""
    if quick:
        shapes, dtypes, inputs = QUICK_POINTS, ("bf16",), (2,)
    else:
        shapes, dtypes, inputs = tuple((b, v) for b in BATCHES for v in VOCABS), tuple(DTYPES), INPUTS
    points = [dict(batch=b, vocab=v, dtype=d, mode=m, inputs=n)
              for (b, v) in shapes for d in dtypes for n in inputs for m in MODES]
    return [p for p in points if all(p[k] in allowed for k, allowed in (only or {}).items())]


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """old rows, with those of the same (impl, point) replaced by new ones (--append)."""
    key = lambda r: (r["impl"], r["batch"], r["vocab"], r["dtype"], r["mode"], r["inputs"])  # noqa: E731
    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + new


def logits_bytes(point: dict) -> int:
    return point["batch"] * point["vocab"] * point["inputs"] * torch.empty((), dtype=DTYPES[point["dtype"]]).element_size()


def make_row(impl: str, point: dict, samples_us: list[float] | None, error: str | None = None,
             peak: float | None = None) -> dict:
    """One JSON row: the point, and median_us / gbps (and fraction of peak), or the error."""
    row = dict(impl=impl, **point)
    if error is not None or not samples_us:
        row["error"] = error or "no samples"
        return row
    median = statistics.median(samples_us)
    row.update(median_us=round(median, 2), reps=len(samples_us),
               gbps=round(logits_bytes(point) / (median * 1e-6) / 1e9, 1))
    if peak:
        row["frac_peak"] = round(row["gbps"] / peak, 3)
    return row


def make_inputs(point: dict, device: str = "cuda"):
    """(base, reward, ref or None) [B, V]: an LLM-like spread (randn * 2 plus strong peaks), the
    reward and reference models roughly agreeing with the base; seeded from the point."""
    b, v, dtype = point["batch"], point["vocab"], DTYPES[point["dtype"]]
    gen = torch.Generator(device=device).manual_seed(b * 1_000_003 + v)
    base = torch.randn(b, v, generator=gen, device=device) * 2.0
    peaks = torch.randint(0, v, (b, 8), generator=gen, device=device)
    base.scatter_add_(1, peaks, 8.0 + 4.0 * torch.rand(b, 8, generator=gen, device=device))
    reward = 0.8 * base + 1.2 * torch.randn(b, v, generator=gen, device=device)
    ref = 0.9 * base + 1.0 * torch.randn(b, v, generator=gen, device=device) if point["inputs"] == 3 else None
    return base.to(dtype), reward.to(dtype), (ref.to(dtype) if ref is not None else None)


class Timer:
    """Device time of one call (a CUDA-graph replay after a read-only L2 flush) and wall time of an
    eager call."""

    SLEEP_CYCLES = 200_000  # ~100 us at ~2 GHz: longer than the host takes to enqueue a replay

    def __init__(self):
        l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 64 * 2**20
        self.flush = torch.ones(2 * l2 // 4, dtype=torch.float32, device="cuda")
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def _flush(self) -> None:
        self.flush.sum()  # reads only: nothing dirty is left for the timed call to write back

    def device(self, run) -> float:
        """us between events around run() (a graph replay), the GPU busy while the host enqueues."""
        self._flush()
        torch.cuda._sleep(self.SLEEP_CYCLES)
        self.start.record()
        run()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) * 1e3

    def eager(self, fn, *args) -> float:
        """Wall us of one eager call from the host until the device is done (after a flush)."""
        self._flush()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(*args)
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e6


def capture(fn, args) -> tuple:
    """(replay, "graph") for fn(*args) captured in a CUDA graph (warmed up on a side stream), or
    (eager call, "eager") when the implementation cannot be captured."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn(*args)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(*args)
        torch.cuda.synchronize()
        return graph.replay, "graph"
    except Exception:  # e.g. a host sync inside the implementation
        torch.cuda.synchronize()
        return (lambda: fn(*args)), "eager"


def measure_copy_gbps(nbytes: int = 2**30, reps: int = 10) -> float:
    """Device-to-device copy bandwidth (read + write bytes / time), median of reps."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    del src, dst
    return round(2 * nbytes / statistics.median(times) / 1e9, 1)


def time_point(point: dict, impls: dict, timer: Timer, reps: int, peak: float | None) -> list[dict]:
    base, reward, ref = make_inputs(point)
    seed = torch.tensor([1234], dtype=torch.int64, device="cuda")
    offset = torch.tensor([0], dtype=torch.int64, device="cuda")
    args = (base, reward, ref, point["mode"], seed, offset)
    live, errors, runs, how = [], {}, {}, {}
    for name, fn in impls.items():
        try:
            if hasattr(fn, "prepare"):  # flashinfer_sampler: the combined row is made outside the timing
                fn.prepare(base, reward, ref, point["mode"])
            for _ in range(2):  # warm-up: compilation, autotuning, allocator
                fn(*args)
            torch.cuda.synchronize()
            runs[name], how[name] = capture(fn, args)
            live.append(name)
        except Exception as exc:  # recorded per implementation (e.g. FlashInfer missing, OOM)
            errors[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            torch.cuda.synchronize()
    samples: dict[str, list[float]] = {n: [] for n in live}
    eager_samples: dict[str, list[float]] = {n: [] for n in live}
    for r in range(reps):
        for name in live[r % max(len(live), 1):] + live[:r % max(len(live), 1)]:  # rotate who goes first
            samples[name].append(timer.device(runs[name]))
            if r < max(3, reps // 5):
                eager_samples[name].append(timer.eager(impls[name], *args))
    rows = []
    for n in live:
        row = make_row(n, point, samples[n], peak=peak)
        row.update(timing=how[n], eager_us=round(statistics.median(eager_samples[n]), 2))
        rows.append(row)
    rows += [make_row(n, point, None, error=e) for n, e in errors.items()]
    return rows


def _versions() -> dict:
    # The installed version from the package metadata: importing triton here would fix its
    # interpreter mode (TRITON_INTERPRET) for the rest of the process.
    from importlib.metadata import PackageNotFoundError, version

    try:
        triton_version = version("triton")
    except PackageNotFoundError as exc:
        triton_version = f"not installed: {type(exc).__name__}"
    from gpu_impls import flashinfer_status

    return dict(torch=torch.__version__, cuda=torch.version.cuda, triton=triton_version,
                flashinfer=flashinfer_status(), tita_ext=getattr(__import__("tita_ext"), "__version__", None),
                python=platform.python_version())


def summary(rows: list[dict]) -> list[str]:
    """The issue's acceptance checks (two inputs, topk_topp), as printable lines."""
    by = {(r["impl"], r["batch"], r["vocab"], r["dtype"], r["mode"], r["inputs"]): r for r in rows if "median_us" in r}
    lines = []
    headline = by.get(("tita_cuda", 64, 151936, "bf16", "topk_topp", 2))
    if headline and "frac_peak" in headline:
        lines.append(f"B=64 x V=151936 bf16 topk_topp: {headline['frac_peak']:.0%} of peak (target >= 70%)")
    small = by.get(("tita_cuda", 1, 32064, "bf16", "topk_topp", 2))
    if small:
        lines.append(f"B=1 x V=32064 bf16 topk_topp: {small['median_us']:.1f} us (target <= 10 us)")
    worst = {}
    for (impl, b, v, d, m, n), r in by.items():
        mine = by.get(("tita_cuda", b, v, d, m, n))
        if impl == "tita_cuda" or mine is None or m != "topk_topp" or n != 2:
            continue
        ratio = r["median_us"] / mine["median_us"]
        worst[impl] = min(worst.get(impl, ratio), ratio)
    for impl, ratio in sorted(worst.items()):
        target = ">= 5x" if impl == "eager" else "> 1x"
        lines.append(f"slowest {impl}/tita_cuda over the topk_topp two-input grid: {ratio:.2f}x (target {target})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B=1 x V=32064 and B=64 x V=151936, bf16, two inputs")
    parser.add_argument("--impls", default=",".join(IMPL_NAMES), help="comma-separated subset of " + ",".join(IMPL_NAMES))
    parser.add_argument("--reps", type=int, help="timed calls per implementation and point (default 50; quick 15)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/ops-<gpu>.json; a temp dir with --quick)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--dry-run", action="store_true", help="print the grid and exit (no GPU needed)")
    parser.add_argument("--batches", help="only these batch sizes (comma-separated), to run the grid in pieces")
    parser.add_argument("--vocabs", help="only these vocabulary sizes")
    parser.add_argument("--dtypes", help="only these dtypes (bf16, fp32)")
    parser.add_argument("--modes", help="only these modes (greedy, sample, topk_topp)")
    parser.add_argument("--inputs", help="only these numbers of inputs (2, 3)")
    parser.add_argument("--append", action="store_true",
                        help="merge into the existing JSON (rows of the same impl and point are replaced)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.impls.split(",") if n.strip()]
    unknown = sorted(set(names) - set(IMPL_NAMES))
    if unknown:
        parser.error(f"unknown implementation(s) {', '.join(unknown)}; choose from {', '.join(IMPL_NAMES)}")
    only = {}
    for key, text, cast in (("batch", args.batches, int), ("vocab", args.vocabs, int), ("dtype", args.dtypes, str),
                            ("mode", args.modes, str), ("inputs", args.inputs, int)):
        if text:
            try:
                only[key] = [cast(v.strip()) for v in text.split(",") if v.strip()]
            except ValueError:
                parser.error(f"--{key}s must be a comma-separated list, got {text!r}")
    points = grid(args.quick, only)
    if not points:
        parser.error("no grid point matches the filters")
    reps = args.reps or (15 if args.quick else 50)
    if args.dry_run:
        print(f"{len(points)} points x {len(names)} implementations ({', '.join(names)}), {reps} reps each")
        for p in points:
            print(f"  B={p['batch']:<4} V={p['vocab']:<7} {p['dtype']:<5} {p['mode']:<10} inputs={p['inputs']}")
        return 0
    if not torch.cuda.is_available():
        print("run_ops_gpu.py needs a CUDA device (use --dry-run to see the grid)", file=sys.stderr)
        return 2

    from gpu_impls import IMPLS

    impls = {n: IMPLS[n] for n in names}
    device_name = torch.cuda.get_device_name(0)
    slug = gpu_slug(device_name)
    default_dir = tempfile.gettempdir() if args.quick else RESULTS_DIR
    out_path = args.out or os.path.join(default_dir, f"ops-{slug}{'-quick' if args.quick else ''}.json")
    peak = peak_gbps(device_name)
    copy_gbps = measure_copy_gbps()
    versions = _versions()
    print(f"{device_name}: peak {peak} GB/s (vendor), device copy {copy_gbps} GB/s; {versions}")
    timer = Timer()
    rows = []
    for i, point in enumerate(points):
        point_rows = time_point(point, impls, timer, reps, peak)
        rows += point_rows
        cells = "  ".join(f"{r['impl']} {r['median_us']:.1f}us" if "median_us" in r else f"{r['impl']} -"
                          for r in point_rows)
        print(f"[{i + 1}/{len(points)}] B={point['batch']} V={point['vocab']} {point['dtype']} {point['mode']} "
              f"inputs={point['inputs']}: {cells}", flush=True)
        torch.cuda.empty_cache()
    if args.append and os.path.exists(out_path):
        with open(out_path) as f:
            rows = merge_rows(json.load(f)["rows"], rows)
    lines = summary(rows)
    print("\n".join(lines))
    result = dict(
        machine=slug, machine_description=device_name, device=device_name, peak_gbps=peak,
        peak_source="vendor figure by device name" if peak else "unknown device: see measured_copy_gbps",
        measured_copy_gbps=copy_gbps, l2_flush_bytes=timer.flush.numel() * 4, **versions, git_commit=_git_commit(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), quick=args.quick,
        reps=reps, alpha=ALPHA, modes=MODE_PARAMS,
        timing=("median_us: CUDA events around one CUDA-graph replay of one call (row timing 'graph'; 'eager' when "
                "not capturable) after a read-only L2 flush, host enqueue hidden; eager_us: host wall time of an "
                "eager call until the device is done; medians over reps"),
        summary=lines, rows=rows)
    if result["peak_gbps"] is None:
        result["peak_gbps"] = copy_gbps  # the plot's fraction-of-peak axis needs a figure
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    from tita_ext.safe_write import write_json  # crash-safe: temp file, fsync, rename
    write_json(out_path, result, indent=1)
    print(f"wrote {out_path}")
    if not args.no_plot:
        try:
            import plot_ops

            for dtype, inputs in plot_ops.variants(out_path):
                print(f"wrote {plot_ops.plot(out_path, None, dtype, inputs)}")
        except ImportError as exc:
            print(f"no plot ({exc}); run benchmarks/plot_ops.py {out_path} where matplotlib is installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

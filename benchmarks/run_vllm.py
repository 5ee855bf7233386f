"""Serving throughput: vLLM with the base model alone vs vLLM with the TITA composite vs guided_generate.

    python benchmarks/run_vllm.py                  # -> benchmarks/results/vllm-<device>.json
    python benchmarks/run_vllm.py --quick          # tiny models, few tokens -> a temp file (unless --out)
    python benchmarks/run_vllm.py --new-tokens 128 --rounds 7 --batch 16

Runs in an environment with vLLM and tita_ext installed (.ci/vllm.sh makes one on the CPU; on a GPU
machine the same script with vLLM's CUDA wheel). Models: random-weight Llama base and Qwen2 reward
built in code (timing does not depend on weight values), saved and exported once to a temp folder.

Every system decodes the same B prompts (different lengths) to exactly --new-tokens tokens per row,
greedy, alpha 0.6 (vLLM: ignore_eos; guided_generate: an EOS id outside the tokenizer, which can
never be chosen). tokens/s = B * new tokens / the whole call (prefill included). One warm-up call
each, then --rounds interleaved rounds (the order rotates every round); reported: medians over
rounds, and the ratios tita/base and tita/guided_generate of the medians.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run_ops_cpu beside this file

from run_ops_cpu import _git_commit, cpu_model, machine_slug  # noqa: E402

from tita_ext.safe_write import write_json  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ALPHA = 0.6
PROMPTS = ["There", "USER: What is in the picture? ASSISTANT:", "Is there a red cube in the image?",
           "A blue ball on a table next to a cup under a lamp in a box on the floor.", "No, there is",
           "There is a green star near a window.", "ring", "USER: Is there a cone? ASSISTANT: Yes,"]
# name -> (base Llama hidden, layers; reward Qwen2 hidden, layers, heads, kv heads); head sizes >= 32.
SIZES = {"tiny": (128, 2, 128, 1, 2, 1), "small": (512, 8, 256, 4, 4, 2)}
SYSTEMS = ("vllm_base", "vllm_tita", "guided_generate")


def build_models(size: str, device: torch.device, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    from tita_ext.tiny_models import tiny_llama
    from tita_ext.vllm.tiny_pair import INIT_STD, tiny_qwen2

    base_h, base_l, rew_h, rew_l, heads, kv = SIZES[size]
    models = {"base": tiny_llama(hidden_size=base_h, layers=base_l, seed=0, init_std=INIT_STD),
              "reward": tiny_qwen2(hidden_size=rew_h, layers=rew_l, heads=heads, kv_heads=kv, seed=1)}
    return {role: m.to(device=device, dtype=dtype) for role, m in models.items()}


def describe(models: dict[str, torch.nn.Module]) -> dict:
    out = {}
    for role, m in models.items():
        c = m.config
        out[role] = dict(architecture=type(m).__name__, hidden_size=c.hidden_size, layers=c.num_hidden_layers,
                         heads=c.num_attention_heads, kv_heads=c.num_key_value_heads, logits=c.vocab_size,
                         parameters_m=round(sum(p.numel() for p in m.parameters()) / 1e6, 2))
    return out


def batch_prompts(batch: int) -> list[list[int]]:
    from tita_ext.tiny_models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    return [tokenizer(PROMPTS[i % len(PROMPTS)])["input_ids"] for i in range(batch)]


def vllm_runner(vllm, folder: str, args, dtype: str):
    """A call decoding the batch with an engine on `folder`; returns it and the engine's start seconds."""
    start = time.perf_counter()
    kwargs = dict(dtype=dtype, max_model_len=512, max_num_seqs=max(args.batch, 1), seed=0,
                  enforce_eager=args.enforce_eager, tensor_parallel_size=args.tensor_parallel_size)
    if not torch.cuda.is_available():
        kwargs["kv_cache_memory_bytes"] = 1 << 28  # the CPU backend otherwise reserves most of the memory
    llm = vllm.LLM(model=folder, **kwargs)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)

    def run(ids: list[list[int]]) -> int:
        outputs = llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outputs)

    return llm, run, time.perf_counter() - start


def guided_runner(models, args, device: torch.device):
    from tita_ext import guided_generate
    from tita_ext.tiny_models import VOCAB_WIDTH, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    never = VOCAB_WIDTH - 1  # past the tokenizer: capped out, so rows run to --new-tokens

    def run(ids: list[list[int]]) -> int:
        batch = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(device)
        out = guided_generate(models["base"], models["reward"], dict(batch), alpha=ALPHA, do_sample=False,
                              max_new_tokens=args.new_tokens, tokenizer=tokenizer, eos_token_id=never)
        return int(out.lengths.sum())

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="small", help="model sizes (default small)")
    parser.add_argument("--batch", type=int, default=8, help="prompts per call (default 8)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per row (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds (default 5)")
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM without torch.compile / CUDA graphs")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallelism (GPUs)")
    parser.add_argument("--threads", type=int, help="torch threads of guided_generate (default: torch's; vLLM's "
                                                     "CPU worker picks its own and logs it)")
    parser.add_argument("--quick", action="store_true", help="tiny models, 16 tokens, 2 rounds, eager; temp file")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/vllm-<device>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.new_tokens, args.rounds, args.enforce_eager = "tiny", 16, 2, True

    import vllm

    from tita_ext.vllm.export import export_vllm
    from tita_ext.vllm.tiny_pair import save_trio

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    slug = ("gpu-" + torch.cuda.get_device_name().lower().replace(" ", "-")) if cuda else machine_slug()
    out_path = args.out or os.path.join(tempfile.gettempdir() if args.quick else RESULTS_DIR,
                                        f"vllm-{slug}{'-quick' if args.quick else ''}.json")
    load = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build_models(args.size, device, dtype)
    ids = batch_prompts(args.batch)
    with tempfile.TemporaryDirectory(prefix="tita-vllm-bench-") as root:
        folders = save_trio(root, models)
        tita = export_vllm(folders["base"], folders["reward"], os.path.join(root, "tita"), alpha=ALPHA)
        engines, runs, start_s = [], {}, {}
        for name, folder in (("vllm_base", str(folders["base"])), ("vllm_tita", str(tita))):
            llm, runs[name], start_s[name] = vllm_runner(vllm, folder, args, str(dtype).split(".")[-1])
            engines.append(llm)
        runs["guided_generate"] = guided_runner(models, args, device)

        expected = args.batch * args.new_tokens
        for name, run in runs.items():  # warm-up, and every system decodes exactly the same amount
            got = run(ids)
            if got != expected:
                raise RuntimeError(f"{name} decoded {got} tokens, not {expected}")
        per_round: dict[str, list[float]] = {name: [] for name in SYSTEMS}
        for r in range(args.rounds):
            order = SYSTEMS[r % len(SYSTEMS):] + SYSTEMS[:r % len(SYSTEMS)]
            for name in order:
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                runs[name](ids)
                per_round[name].append(expected / (time.perf_counter() - t))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {per_round[n][-1]:.1f}" for n in SYSTEMS)
                  + " tokens/s", flush=True)
        for llm in engines:
            llm.llm_engine.engine_core.shutdown()

    median = {name: statistics.median(v) for name, v in per_round.items()}
    result = dict(
        device=slug, device_name=torch.cuda.get_device_name() if cuda else cpu_model(),
        machine_description=f"{cpu_model()}, {platform.platform()}", cpu_count=os.cpu_count(),
        load_average_at_start=load, torch=torch.__version__, vllm=vllm.__version__,
        transformers=__import__("transformers").__version__, python=platform.python_version(),
        git_commit=_git_commit(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        dtype=str(dtype).split(".")[-1], size=args.size, models=describe(models), batch=args.batch,
        prompt_lengths=[len(p) for p in ids], new_tokens=args.new_tokens, rounds=args.rounds, alpha=ALPHA,
        guided_generate_threads=torch.get_num_threads(), enforce_eager=args.enforce_eager,
        tensor_parallel_size=args.tensor_parallel_size,
        engine_start_s={k: round(v, 1) for k, v in start_s.items()},
        definition="tokens/s = batch * new_tokens / wall time of one call (prefill included), greedy, fixed "
                   "length; medians over interleaved rounds (order rotating)",
        tokens_per_s_median={k: round(v, 2) for k, v in median.items()},
        tokens_per_s_rounds={k: [round(x, 2) for x in v] for k, v in per_round.items()},
        ratio_tita_over_base=round(median["vllm_tita"] / median["vllm_base"], 3),
        ratio_tita_over_guided_generate=round(median["vllm_tita"] / median["guided_generate"], 3))
    write_json(out_path, result, indent=1)  # crash-safe: a temp sibling, fsynced, renamed
    print(json.dumps(result["tokens_per_s_median"]), f"tita/base {result['ratio_tita_over_base']}, "
          f"tita/guided_generate {result['ratio_tita_over_guided_generate']}\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Triton twin of the fused op: same contract, same random numbers, same tokens.

One program per row, in passes over blocks of the vocabulary:
  1. max of the base row, online log-sum-exp of the reward and reference rows;
  2. z = combine / T with the plausibility floor, stored in a float32 [B, V] buffer
     (guided_logprobs' output itself), and its maximum;
  3. top-k cut: the k-th largest z, by bisection over the ordered bit patterns of fp32;
  4. top-p cut: the smallest value whose strictly-greater mass is below top_p, by the same
     bisection, on the top-k survivors; masses exp(z - max) in fp64 of the fp32 difference and
     summed in fp64, as the reference does;
  5. min-p cut; the normaliser over the allowed set;
  6. guided_sample: the Gumbel race (Philox4x32-10 + the portable log, bit-equal to
     tita_ext.philox) and the token reward; guided_logprobs: z - log normaliser.
Bisection finds the exact cut values (each predicate is monotone over a discrete domain), so no
sort is needed. Compiled kernels are launched with enable_fp_fusion=False: the noise and the
scores must not be contracted into FMAs (bit-equality with the reference). On a CPU the kernels
run under TRITON_INTERPRET=1 (the tests do that on small shapes).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import contract, logprobs_grad, reference

_BLOCK = 1024
_NEG_INF: tl.constexpr = tl.constexpr(float("-inf"))
_MIN_TEMPERATURE: tl.constexpr = tl.constexpr(contract.MIN_TEMPERATURE)


@triton.jit
def _plog(x):
    """tita_ext.philox.plog: fp32 log from basic operations, step for step."""
    x = tl.maximum(x, 1.1754943508222875e-38)
    bits = x.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 126
    m = ((bits & 0x007FFFFF) | 0x3F000000).to(tl.float32, bitcast=True)
    small = m < 0.70710678118654752440
    e = tl.where(small, e - 1, e)
    m = tl.where(small, m + m, m)
    f = m - 1.0
    f2 = f * f
    p = f * 0.0 + 7.0376836292e-2
    p = p * f + -1.1514610310e-1
    p = p * f + 1.1676998740e-1
    p = p * f + -1.2420140846e-1
    p = p * f + 1.4249322787e-1
    p = p * f + -1.6668057665e-1
    p = p * f + 2.0000714765e-1
    p = p * f + -2.4999993993e-1
    p = p * f + 3.3333331174e-1
    ef = e.to(tl.float32)
    y = f * f2 * p
    y = y + ef * -2.12194440e-4
    y = y - f2 * 0.5
    return f + y + ef * 0.693359375


@triton.jit
def _gumbel(ids, k0, k1, c1, c2, c3):
    """Gumbel noise of candidates `ids` (int32/int64) for the key (k0, k1) and counter words
    c1 (row), c2, c3 (offset): Philox4x32-10 word ids & 3 of counter ids >> 2."""
    c0 = (ids >> 2).to(tl.uint32)
    lane = ids & 3
    zero = c0 * 0
    k0, k1 = k0.to(tl.uint32), k1.to(tl.uint32)
    x0, x1, x2, x3 = c0, c1.to(tl.uint32) + zero, c2.to(tl.uint32) + zero, c3.to(tl.uint32) + zero
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(x0, 0xD2511F53)
        lo0 = x0 * 0xD2511F53
        hi1 = tl.umulhi(x2, 0xCD9E8D57)
        lo1 = x2 * 0xCD9E8D57
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    bits = tl.where(lane == 0, x0, tl.where(lane == 1, x1, tl.where(lane == 2, x2, x3)))
    u = ((bits >> 9) * 2 + 1).to(tl.float32) * 5.9604644775390625e-08
    return -_plog(-_plog(u))


@triton.jit
def _load_clean(ptr, row_stride, col_stride, row, ids, mask):
    """fp32 logits of one row at `ids`; non-finite and masked-out entries become -inf."""
    x = tl.load(ptr + row * row_stride + ids * col_stride, mask=mask, other=_NEG_INF).to(tl.float32)
    return tl.where((x - x) == 0.0, x, _NEG_INF)


@triton.jit
def _to_key(x):
    """fp32 -> int64 key with the same order (bit-pattern bisection domain)."""
    bits = x.to(tl.int32, bitcast=True)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)


@triton.jit
def _from_key(key):
    bits = key.to(tl.int32)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _guided_kernel(
    base_ptr, b_rs, b_cs, reward_ptr, r_rs, r_cs, ref_ptr, f_rs, f_cs,
    alpha_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, plaus_ptr,
    seed_ptr, seed_step, offset_ptr, offset_step, row_addr_step,
    z_ptr, z_rs, tokens_ptr, logprob_ptr, reward_out_ptr, status_ptr,
    V, WIDTH,
    HAS_REF: tl.constexpr, SAMPLE: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    alpha = tl.load(alpha_ptr + row)
    temperature = tl.load(temp_ptr + row)
    top_k = tl.load(topk_ptr + row)
    top_p = tl.load(topp_ptr + row)
    min_p = tl.load(minp_ptr + row)
    floor_p = tl.load(plaus_ptr + row)
    valid = (alpha - alpha == 0.0) & (temperature - temperature == 0.0)
    valid = valid & ((temperature == 0.0) | (temperature >= _MIN_TEMPERATURE)) & (top_k >= 0)
    valid = valid & (top_p > 0.0) & (top_p <= 1.0) & (min_p >= 0.0) & (min_p <= 1.0)
    valid = valid & (floor_p >= 0.0) & (floor_p <= 1.0)
    greedy = temperature == 0.0
    inv_t = 1.0 / tl.where(greedy | ~valid, 1.0, temperature)
    alpha = tl.where(valid, alpha, 0.0)
    cols = tl.arange(0, BLOCK)

    # 1. base max, reward / reference log-sum-exp
    b_max = tl.full([], _NEG_INF, tl.float32)
    r_m, r_s = tl.full([], _NEG_INF, tl.float32), tl.full([], 0.0, tl.float32)
    f_m, f_s = tl.full([], _NEG_INF, tl.float32), tl.full([], 0.0, tl.float32)
    for start in range(0, V, BLOCK):
        ids = start + cols
        mask = ids < V
        b = _load_clean(base_ptr, b_rs, b_cs, row, ids, mask)
        r = _load_clean(reward_ptr, r_rs, r_cs, row, ids, mask)
        f = b
        if HAS_REF:
            f = _load_clean(ref_ptr, f_rs, f_cs, row, ids, mask)
        b_max = tl.maximum(b_max, tl.max(b, 0))
        m = tl.maximum(r_m, tl.max(r, 0))
        r_s = tl.where(m == _NEG_INF, 0.0, r_s * tl.exp(r_m - m) + tl.sum(tl.exp(r - m), 0))
        r_m = m
        m = tl.maximum(f_m, tl.max(f, 0))
        f_s = tl.where(m == _NEG_INF, 0.0, f_s * tl.exp(f_m - m) + tl.sum(tl.exp(f - m), 0))
        f_m = m
    floor = tl.where(valid & (floor_p > 0.0), b_max + _plog(tl.where(floor_p > 0.0, floor_p, 1.0)), _NEG_INF)

    # 2. z = combine / T (bit-equal to the reference), the floor; store z, find its max
    #    An id whose inputs are finite but whose s * inv_t is not (fp32 overflow) fails the row.
    z_max = tl.full([], _NEG_INF, tl.float32)
    n_finite = tl.full([], 0, tl.int64)
    n_overflow = tl.full([], 0, tl.int64)
    for start in range(0, V, BLOCK):
        ids = start + cols
        mask = ids < V
        b = _load_clean(base_ptr, b_rs, b_cs, row, ids, mask)
        r = _load_clean(reward_ptr, r_rs, r_cs, row, ids, mask)
        finite_inputs = (b > _NEG_INF) & (r > _NEG_INF)
        if HAS_REF:
            f = _load_clean(ref_ptr, f_rs, f_cs, row, ids, mask)
            finite_inputs = finite_inputs & (f > _NEG_INF)
            s = b + alpha * (r - f)
        else:
            d = r - b
            s = tl.where(alpha < 0.5, b + alpha * d, r - d * (1.0 - alpha))
        s = tl.where((s - s) == 0.0, s, _NEG_INF)
        scaled = s * inv_t
        n_overflow += tl.sum((finite_inputs & ((scaled - scaled) != 0.0)).to(tl.int64), 0)
        s = tl.where(b < floor, _NEG_INF, s)
        z = s * inv_t
        tl.store(z_ptr + row * z_rs + ids, z, mask=mask)
        z_max = tl.maximum(z_max, tl.max(z, 0))
        n_finite += tl.sum((z > _NEG_INF).to(tl.int64), 0)

    # 3. top-k: the k-th largest z, the largest t with count(z >= t) >= k
    kth = tl.full([], _NEG_INF, tl.float32)
    if (top_k > 0) & (top_k < n_finite) & valid:
        lo = _to_key(tl.full([], -3.4028234663852886e38, tl.float32))
        hi = _to_key(z_max)
        for _ in range(33):
            if lo < hi:
                mid = lo + (hi - lo + 1) // 2
                t = _from_key(mid)
                count = tl.full([], 0, tl.int64)
                for start in range(0, V, BLOCK):
                    ids = start + cols
                    z = tl.load(z_ptr + row * z_rs + ids, mask=ids < V, other=_NEG_INF)
                    count += tl.sum((z >= t).to(tl.int64), 0)
                if count >= top_k:
                    lo = mid
                else:
                    hi = mid - 1
        kth = _from_key(lo)

    # 4. top-p: the smallest t whose strictly-greater mass (of the top-k survivors) is < top_p * total
    cut = kth
    if (top_p < 1.0) & valid & (z_max > _NEG_INF):
        total = tl.full([], 0.0, tl.float64)
        for start in range(0, V, BLOCK):
            ids = start + cols
            z = tl.load(z_ptr + row * z_rs + ids, mask=ids < V, other=_NEG_INF)
            keep = (z >= kth) & (z > _NEG_INF)
            total += tl.sum(tl.where(keep, tl.exp((z - z_max).to(tl.float64)), 0.0), 0)
        target = top_p.to(tl.float64) * total
        lo = _to_key(tl.where(kth > _NEG_INF, kth, -3.4028234663852886e38))
        hi = _to_key(z_max)
        for _ in range(33):
            if lo < hi:
                mid = lo + (hi - lo) // 2
                t = _from_key(mid)
                above = tl.full([], 0.0, tl.float64)
                for start in range(0, V, BLOCK):
                    ids = start + cols
                    z = tl.load(z_ptr + row * z_rs + ids, mask=ids < V, other=_NEG_INF)
                    keep = (z > t) & (z >= kth)
                    above += tl.sum(tl.where(keep, tl.exp((z - z_max).to(tl.float64)), 0.0), 0)
                if above < target:
                    hi = mid
                else:
                    lo = mid + 1
        cut = tl.maximum(cut, _from_key(lo))

    # 5. min-p, then the normaliser of the allowed set
    cut = tl.where(valid & (min_p > 0.0), tl.maximum(cut, z_max + _plog(tl.where(min_p > 0.0, min_p, 1.0))), cut)
    norm = tl.full([], 0.0, tl.float32)
    for start in range(0, V, BLOCK):
        ids = start + cols
        z = tl.load(z_ptr + row * z_rs + ids, mask=ids < V, other=_NEG_INF)
        norm += tl.sum(tl.where((z >= cut) & (z > _NEG_INF), tl.exp(z - z_max), 0.0), 0)
    log_norm = z_max + tl.log(norm)
    status = tl.where(~valid, 2, tl.where(n_overflow > 0, 3, tl.where(z_max == _NEG_INF, 1, 0)))

    if SAMPLE:
        # 6a. the race over the allowed set: argmax z (+ Gumbel noise), ties to the lowest id
        seed = tl.load(seed_ptr + row * seed_step)
        offset = tl.load(offset_ptr + row * offset_step)
        row_addr = row * row_addr_step
        best_key = tl.full([], _NEG_INF, tl.float32)
        best_id = tl.full([], -1, tl.int64)
        best_z = tl.full([], _NEG_INF, tl.float32)
        for start in range(0, V, BLOCK):
            ids = start + cols
            z = tl.load(z_ptr + row * z_rs + ids, mask=ids < V, other=_NEG_INF)
            allowed = (z >= cut) & (z > _NEG_INF)
            key = z
            if temperature > 0.0:
                key = z + _gumbel(ids, seed, seed >> 32, row_addr, offset, offset >> 32)
            key = tl.where(allowed, key, _NEG_INF)
            m = tl.max(key, 0)
            if m > best_key:
                j = tl.argmax(key, 0)
                best_key = m
                best_id = start + j
                best_z = tl.max(tl.where(cols == j, z, _NEG_INF), 0)
        ok = (status == 0) & (best_id >= 0)
        status = tl.where((status == 0) & (best_id < 0), 1, status)
        token = tl.where(ok, best_id, 0)
        r_y = _load_clean(reward_ptr, r_rs, r_cs, row, token, ok)
        if HAS_REF:
            f_y = _load_clean(ref_ptr, f_rs, f_cs, row, token, ok)
        else:
            f_y = _load_clean(base_ptr, b_rs, b_cs, row, token, ok)
        token_reward = (r_y - (r_m + tl.log(r_s))) - (f_y - (f_m + tl.log(f_s)))
        tl.store(tokens_ptr + row, tl.where(ok, best_id, -1).to(tl.int64))
        tl.store(logprob_ptr + row, tl.where(ok, best_z - log_norm, float("nan")))
        tl.store(reward_out_ptr + row, tl.where(ok, token_reward, float("nan")))
        tl.store(status_ptr + row, status.to(tl.int32))
    else:
        # 6b. the distribution itself, in place of z; -inf beyond the shared range, NaN rows on failure
        for start in range(0, WIDTH, BLOCK):
            ids = start + cols
            z = tl.load(z_ptr + row * z_rs + ids, mask=ids < V, other=_NEG_INF)
            out = tl.where((z >= cut) & (z > _NEG_INF) & (ids < V), z - log_norm, _NEG_INF)
            out = tl.where(status == 0, out, float("nan"))
            tl.store(z_ptr + row * z_rs + ids, out, mask=ids < WIDTH)


def _launch(base, reward, ref, alpha, alpha_rows, temperature, temperature_rows, top_k, top_k_rows, top_p,
            top_p_rows, min_p, min_p_rows, plausibility, plausibility_rows, vocab_size, sample, seed=None,
            offset=None):
    batch, width = base.shape
    device, f32 = base.device, torch.float32
    vocab = reference.shared_vocab(base, reward, ref, vocab_size)
    z = torch.empty(batch, width, dtype=f32, device=device)
    outputs = [torch.empty(batch, dtype=dt, device=device) for dt in (torch.int64, f32, f32, torch.int32)]
    if batch == 0:
        return z, outputs
    if seed is None:
        seed = offset = torch.zeros(1, dtype=torch.int64, device=device)
    per_row_seed = seed.numel() == batch and batch != 1
    f = ref if ref is not None else base
    launch = dict(HAS_REF=ref is not None, SAMPLE=sample, BLOCK=_BLOCK)
    if device.type != "cpu":
        launch["enable_fp_fusion"] = False  # no FMA: scores and noise stay bit-equal to the reference
    wrap_triton(_guided_kernel)[(batch,)](
        base, base.stride(0), base.stride(1), reward, reward.stride(0), reward.stride(1), f, f.stride(0), f.stride(1),
        *(column.reshape(batch) for column in reference.param_columns(
            base, alpha, alpha_rows, temperature, temperature_rows, top_k, top_k_rows, top_p, top_p_rows,
            min_p, min_p_rows, plausibility, plausibility_rows)),
        seed, 0 if seed.numel() == 1 else 1, offset, 0 if offset.numel() == 1 else 1, 0 if per_row_seed else 1,
        z, z.stride(0), *outputs, vocab, width, **launch)
    return z, outputs


@triton_op("tita::guided_sample_triton", mutates_args=())
def guided_sample(
    base_logits: torch.Tensor, reward_logits: torch.Tensor, ref_logits: Optional[torch.Tensor],
    alpha: float, alpha_rows: Optional[torch.Tensor], temperature: float, temperature_rows: Optional[torch.Tensor],
    top_k: int, top_k_rows: Optional[torch.Tensor], top_p: float, top_p_rows: Optional[torch.Tensor],
    min_p: float, min_p_rows: Optional[torch.Tensor], plausibility: float, plausibility_rows: Optional[torch.Tensor],
    seed: torch.Tensor, offset: torch.Tensor, vocab_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same arguments and results as torch.ops.tita.guided_sample (see tita_ext.reference)."""
    _, outputs = _launch(base_logits, reward_logits, ref_logits, alpha, alpha_rows, temperature, temperature_rows,
                         top_k, top_k_rows, top_p, top_p_rows, min_p, min_p_rows, plausibility, plausibility_rows,
                         vocab_size, True, seed, offset)
    return tuple(outputs)


@triton_op("tita::guided_logprobs_triton", mutates_args=())
def guided_logprobs(
    base_logits: torch.Tensor, reward_logits: torch.Tensor, ref_logits: Optional[torch.Tensor],
    alpha: float, alpha_rows: Optional[torch.Tensor], temperature: float, temperature_rows: Optional[torch.Tensor],
    top_k: int, top_k_rows: Optional[torch.Tensor], top_p: float, top_p_rows: Optional[torch.Tensor],
    min_p: float, min_p_rows: Optional[torch.Tensor], plausibility: float, plausibility_rows: Optional[torch.Tensor],
    vocab_size: int,
) -> torch.Tensor:
    """Same arguments and result as torch.ops.tita.guided_logprobs (see tita_ext.reference)."""
    z, _ = _launch(base_logits, reward_logits, ref_logits, alpha, alpha_rows, temperature, temperature_rows,
                   top_k, top_k_rows, top_p, top_p_rows, min_p, min_p_rows, plausibility, plausibility_rows,
                   vocab_size, False)
    return z


logprobs_grad.register("tita::guided_logprobs_triton")

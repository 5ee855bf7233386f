"""Pure-PyTorch twin of every tita op: the test oracle and the fallback without the compiled module.

The functions here take the same arguments as the registered ops (`torch.ops.tita.*`): each
sampling parameter is a scalar plus an optional per-row tensor that overrides it. They are
written for clarity, not speed: full sorts, dense noise, one step at a time.

Semantics (DESIGN.md §1-2), per row, on the shared id range [0, V):

    s = b + alpha * (r - b)            (no reference model; evaluated as torch.lerp does, so
                                        alpha = 0 gives b and alpha = 1 gives r exactly)
    s = b + alpha * (r - f)            (explicit reference logits f)
    s = -inf where s is not finite     (NaN or inf in any model's logit excludes the token)
    overflow: a finite-input id whose s * (1 / T) is not finite (fp32 overflow of the
              combination or of the scaling; checked before any filter) fails the row
              with STATUS_OVERFLOW
    plausibility beta > 0: s = -inf where b < max(b) + log(beta)
    z = s / T   (T = 1 when greedy)    (computed as s * (1 / T) in fp32)
    top-k, then top-p (on the renormalised survivors), then min-p: thresholds on z
    choose: greedy argmax(z), or sampling argmax(z + gumbel), ties to the lowest id

`logprob` is log softmax(z) of the chosen token over the surviving set; `token_reward` is
log_softmax(r)[y] - log_softmax(f)[y] over the shared range (f = b without a reference).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import philox
from .contract import MIN_TEMPERATURE, STATUS_BAD_PARAM, STATUS_NO_FINITE, STATUS_OK, STATUS_OVERFLOW


def shared_vocab(base: torch.Tensor, reward: torch.Tensor, ref: torch.Tensor | None, vocab_size: int) -> int:
    """Width of the id range every model scores: the narrowest logits, capped by vocab_size (> 0)."""
    width = min(base.shape[1], reward.shape[1], ref.shape[1] if ref is not None else base.shape[1])
    return min(width, vocab_size) if vocab_size > 0 else width


def _rows(scalar: float, rows: torch.Tensor | None, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Per-row parameter column [B, 1]: the per-row tensor if given, else the scalar broadcast."""
    if rows is not None:
        return rows.to(device=device, dtype=dtype).reshape(batch, 1)
    return torch.full((batch, 1), scalar, device=device, dtype=dtype)


def _finite_or_neg_inf(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.full_like(x, float("-inf")))


def _bad_params(alpha, temperature, top_k, top_p, min_p, plausibility) -> torch.Tensor:
    """[B, 1] bool: a per-row parameter outside its allowed range (see ops.py for the ranges)."""
    bad = ~torch.isfinite(alpha)
    bad |= ~torch.isfinite(temperature) | ~((temperature == 0) | (temperature >= MIN_TEMPERATURE))
    bad |= top_k < 0
    bad |= ~((top_p > 0) & (top_p <= 1))
    bad |= ~((min_p >= 0) & (min_p <= 1))
    bad |= ~((plausibility >= 0) & (plausibility <= 1))
    return bad


def _guided_scores(base, reward, ref, vocab, alpha, inv_t, plausibility, use_floor: bool):
    """z float32 [B, V]: combined, sanitised, plausibility-floored, temperature-scaled scores;
    and overflow bool [B, 1]: some id with finite inputs got a non-finite s * inv_t."""
    b = base[:, :vocab].float()
    r = reward[:, :vocab].float()
    finite_inputs = torch.isfinite(b) & torch.isfinite(r)
    if ref is None:
        diff = r - b
        s = torch.where(alpha < 0.5, b + alpha * diff, r - diff * (1.0 - alpha))
    else:
        f = ref[:, :vocab].float()
        finite_inputs &= torch.isfinite(f)
        s = b + alpha * (r - f)
    s = _finite_or_neg_inf(s)
    overflow = (finite_inputs & ~torch.isfinite(s * inv_t)).any(dim=1, keepdim=True)
    if use_floor:
        b_clean = _finite_or_neg_inf(b)
        floor = b_clean.amax(dim=1, keepdim=True) + philox.plog(plausibility)
        s = torch.where((plausibility > 0) & (b_clean < floor), torch.full_like(s, float("-inf")), s)
    return s * inv_t, overflow


def _top_p_threshold(z: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """[B, 1]: smallest kept value of the nucleus: the last sorted position whose exclusive
    cumulative mass is below top_p (ties at the cut are all kept)."""
    sorted_z, _ = torch.sort(z, dim=1, descending=True)
    zmax = sorted_z[:, :1]
    # float64 masses: the oracle should be more exact than the kernels it judges
    mass = torch.exp((sorted_z - torch.where(torch.isfinite(zmax), zmax, torch.zeros_like(zmax))).double())
    total = mass.sum(dim=1, keepdim=True)
    inclusive = torch.cumsum(mass, dim=1)
    exclusive = torch.cat([torch.zeros_like(inclusive[:, :1]), inclusive[:, :-1]], dim=1)
    kept = (exclusive < top_p * total) & torch.isfinite(sorted_z)
    last = (kept.sum(dim=1, keepdim=True) - 1).clamp(min=0)
    cut = sorted_z.gather(1, last)
    return torch.where(top_p < 1, cut, torch.full_like(cut, float("-inf")))


def _filtered_scores(base, reward, ref, vocab, params, active):
    """z after every filter (-inf outside the allowed set) [B, V], the greedy rows [B, 1] and
    the rows whose scores overflowed [B, 1].

    `active` says which filters may be on (decided from the Python arguments, so the
    reference never syncs with the device to find out)."""
    alpha, temperature, top_k, top_p, min_p, plausibility = params
    greedy = temperature == 0
    ones = torch.ones_like(temperature)
    inv_t = torch.where(greedy, ones, 1.0 / torch.where(greedy, ones, temperature))
    z, overflow = _guided_scores(base, reward, ref, vocab, alpha, inv_t, plausibility, active.plausibility)
    z = torch.where(overflow, torch.full_like(z, float("-inf")), z)  # reported; keep the filters' math finite
    neg_inf = torch.full_like(z, float("-inf"))

    if active.top_k:
        use_k = (top_k > 0) & (top_k < vocab)
        sorted_z, _ = torch.sort(z, dim=1, descending=True)
        kth = sorted_z.gather(1, (top_k.clamp(1, vocab) - 1))
        z = torch.where(use_k & (z < kth), neg_inf, z)
    if active.top_p:
        z = torch.where(z < _top_p_threshold(z, top_p), neg_inf, z)
    if active.min_p:
        zmax = z.amax(dim=1, keepdim=True)
        z = torch.where((min_p > 0) & (z < zmax + philox.plog(min_p)), neg_inf, z)
    return z, greedy, overflow


class _Active(NamedTuple):
    """Which optional steps a call may need: True when a per-row tensor is given or the scalar turns it on."""

    sampling: bool
    top_k: bool
    top_p: bool
    min_p: bool
    plausibility: bool


def _active(temperature, temperature_rows, top_k, top_k_rows, top_p, top_p_rows, min_p, min_p_rows,
            plausibility, plausibility_rows) -> _Active:
    return _Active(
        sampling=temperature_rows is not None or temperature != 0,
        top_k=top_k_rows is not None or top_k > 0,
        top_p=top_p_rows is not None or top_p < 1,
        min_p=min_p_rows is not None or min_p > 0,
        plausibility=plausibility_rows is not None or plausibility > 0,
    )


def param_columns(base, alpha, alpha_rows, temperature, temperature_rows, top_k, top_k_rows,
            top_p, top_p_rows, min_p, min_p_rows, plausibility, plausibility_rows):
    """The six per-row parameters as [B, 1] columns (per-row tensor, or the scalar broadcast):
    alpha, temperature, top_k (int64), top_p, min_p, plausibility."""
    batch, device, f32 = base.shape[0], base.device, torch.float32
    return (
        _rows(alpha, alpha_rows, batch, device, f32),
        _rows(temperature, temperature_rows, batch, device, f32),
        _rows(top_k, top_k_rows, batch, device, torch.int64),
        _rows(top_p, top_p_rows, batch, device, f32),
        _rows(min_p, min_p_rows, batch, device, f32),
        _rows(plausibility, plausibility_rows, batch, device, f32),
    )


def guided_logprobs(
    base_logits: torch.Tensor, reward_logits: torch.Tensor, ref_logits: torch.Tensor | None,
    alpha: float, alpha_rows: torch.Tensor | None, temperature: float, temperature_rows: torch.Tensor | None,
    top_k: int, top_k_rows: torch.Tensor | None, top_p: float, top_p_rows: torch.Tensor | None,
    min_p: float, min_p_rows: torch.Tensor | None, plausibility: float, plausibility_rows: torch.Tensor | None,
    vocab_size: int,
) -> torch.Tensor:
    """float32 [B, base width]: log-probabilities of the filtered guided distribution, -inf
    outside it and beyond the shared id range. Rows that guided_sample would give a non-zero
    status (no allowed token, a bad parameter, an overflowing score) are all NaN."""
    params = param_columns(base_logits, alpha, alpha_rows, temperature, temperature_rows, top_k, top_k_rows,
                     top_p, top_p_rows, min_p, min_p_rows, plausibility, plausibility_rows)
    active = _active(temperature, temperature_rows, top_k, top_k_rows, top_p, top_p_rows, min_p, min_p_rows,
                     plausibility, plausibility_rows)
    vocab = shared_vocab(base_logits, reward_logits, ref_logits, vocab_size)
    bad = _bad_params(*params)
    z, _, overflow = _filtered_scores(base_logits, reward_logits, ref_logits, vocab, _sanitise_params(params, bad),
                                      active)
    logprobs = z - torch.logsumexp(z, dim=1, keepdim=True)
    failed = bad | overflow | ~torch.isfinite(z).any(dim=1, keepdim=True)
    pad = base_logits.shape[1] - vocab
    logprobs = torch.nn.functional.pad(logprobs, (0, pad), value=float("-inf"))
    return torch.where(failed, torch.full_like(logprobs, float("nan")), logprobs)


def _sanitise_params(params, bad):
    """Replace bad rows' parameters by harmless ones so the math stays finite (they are reported)."""
    alpha, temperature, top_k, top_p, min_p, plausibility = params
    alpha = torch.where(bad, torch.zeros_like(alpha), alpha)
    temperature = torch.where(bad, torch.ones_like(temperature), temperature)
    top_k = torch.where(bad, torch.zeros_like(top_k), top_k)
    top_p = torch.where(bad, torch.ones_like(top_p), top_p)
    min_p = torch.where(bad, torch.zeros_like(min_p), min_p)
    plausibility = torch.where(bad, torch.zeros_like(plausibility), plausibility)
    return alpha, temperature, top_k, top_p, min_p, plausibility


def _noise_rows(seed: torch.Tensor, offset: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (seed, offset, row address), int64 [B, 1]. A per-row seed addresses its noise
    with row 0, so a request draws the same numbers wherever it sits in the batch."""
    device = seed.device
    rows = torch.arange(batch, device=device, dtype=torch.int64)[:, None]
    if seed.numel() == batch and batch != 1:
        rows = torch.zeros_like(rows)
    seed_rows = seed.reshape(-1, 1).expand(batch, 1) if seed.numel() == 1 else seed.reshape(batch, 1)
    offset_rows = offset.reshape(-1, 1).expand(batch, 1) if offset.numel() == 1 else offset.reshape(batch, 1)
    return seed_rows.to(torch.int64), offset_rows.to(torch.int64), rows


def guided_sample(
    base_logits: torch.Tensor, reward_logits: torch.Tensor, ref_logits: torch.Tensor | None,
    alpha: float, alpha_rows: torch.Tensor | None, temperature: float, temperature_rows: torch.Tensor | None,
    top_k: int, top_k_rows: torch.Tensor | None, top_p: float, top_p_rows: torch.Tensor | None,
    min_p: float, min_p_rows: torch.Tensor | None, plausibility: float, plausibility_rows: torch.Tensor | None,
    seed: torch.Tensor, offset: torch.Tensor, vocab_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose one token per row. Returns (tokens int64 [B], logprob float32 [B],
    token_reward float32 [B], status int32 [B]); rows with status != 0 get token -1 and NaNs."""
    batch = base_logits.shape[0]
    params = param_columns(base_logits, alpha, alpha_rows, temperature, temperature_rows, top_k, top_k_rows,
                     top_p, top_p_rows, min_p, min_p_rows, plausibility, plausibility_rows)
    active = _active(temperature, temperature_rows, top_k, top_k_rows, top_p, top_p_rows, min_p, min_p_rows,
                     plausibility, plausibility_rows)
    vocab = shared_vocab(base_logits, reward_logits, ref_logits, vocab_size)
    bad = _bad_params(*params)
    z, greedy, overflow = _filtered_scores(base_logits, reward_logits, ref_logits, vocab,
                                           _sanitise_params(params, bad), active)

    keys = z
    if active.sampling:
        noise = philox.gumbel_noise(*_noise_rows(seed, offset, batch), vocab)
        keys = torch.where(greedy, z, z + noise)
    tokens = keys.argmax(dim=1, keepdim=True)  # first maximum: ties go to the lowest id
    logprob = z.gather(1, tokens) - torch.logsumexp(z, dim=1, keepdim=True)

    r = _finite_or_neg_inf(reward_logits[:, :vocab].float())
    f = _finite_or_neg_inf((ref_logits if ref_logits is not None else base_logits)[:, :vocab].float())
    reward_lp = r.gather(1, tokens) - torch.logsumexp(r, dim=1, keepdim=True)
    ref_lp = f.gather(1, tokens) - torch.logsumexp(f, dim=1, keepdim=True)
    token_reward = reward_lp - ref_lp

    no_finite = ~torch.isfinite(z).any(dim=1, keepdim=True)
    status = torch.where(bad, STATUS_BAD_PARAM, torch.where(overflow, STATUS_OVERFLOW,
                                                           torch.where(no_finite, STATUS_NO_FINITE, STATUS_OK)))
    status = status.to(torch.int32)
    failed = status != STATUS_OK
    nan = torch.full_like(logprob, float("nan"))
    tokens = torch.where(failed, torch.full_like(tokens, -1), tokens)
    return (tokens.reshape(batch), torch.where(failed, nan, logprob).reshape(batch),
            torch.where(failed, nan, token_reward).reshape(batch), status.reshape(batch))


def decode_advance(sampled: torch.Tensor, finished: torch.Tensor, stop_ids: torch.Tensor,
                   pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode step's bookkeeping after guided_sample (the twin of tita::decode_advance).

    sampled int64 [B] (guided_sample's tokens, -1 where a row could not be sampled), finished
    bool [B] (rows stopped before this step), stop_ids int64 [S] (EOS ids; may be empty).
    Returns record int64 [B] (pad_id where the row had stopped), feed int64 [B, 1] (the tokens to
    give the models next: record, with -1 replaced by pad_id), finished_after bool [B] (stopped
    now: before, or at a stop id, or at -1) and all_finished bool [] (every row stopped)."""
    record = sampled.masked_fill(finished, pad_id)
    after = finished | (record < 0) | torch.isin(record, stop_ids)
    feed = record.masked_fill(record < 0, pad_id).reshape(-1, 1)
    return record, feed, after, after.all()

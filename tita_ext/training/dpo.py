"""Reward-model training with DPO (Rafailov et al. 2023) on preference pairs, in plain PyTorch.

    loss = -log sigmoid(beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))))

where log pi(y|x) is the summed log-probability of the response tokens only: the prompt, the
image placeholder tokens (expanded by the processor inside the prompt) and padding are masked out.
The reference is a frozen copy of the starting model. Works for LLaVA-style VLMs (one image per
pair) and for text-only causal LMs (pairs without an image).
"""

from __future__ import annotations

import copy
import os
import time
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from .loop import index_batches, optimizer_step, total_steps
from .pairs import PreferencePair, _as_pair, _tokenizer, load_image

IGNORE_INDEX = -100
# Per-token inputs besides input_ids/attention_mask that some processors return (padded with 0).
_TOKEN_KEYS = ("token_type_ids", "mm_token_type_ids")


# --- encoding -----------------------------------------------------------------------------------


def _encode_text(processor, text: str, image) -> dict:
    """One unpadded row: the processor's output for `text` (+ image), tensors with batch dim 1."""
    if image is None:
        return dict(_tokenizer(processor)(text, return_tensors="pt"))
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n


def encode_row(processor, prompt: str, response: str, image=None, *, separator: str = " ",
               append_eos: bool = True) -> dict:
    """prompt + separator + response as one row, with labels = the response's ids (and EOS when
    append_eos) and IGNORE_INDEX on the prompt (image tokens included).

    The text is tokenized whole, as the model saw it when it generated the response; the prompt /
    response boundary is where the whole text's ids stop matching the prompt's own ids (so a
    token merged across the boundary counts as response)."""
    prompt_ids = _encode_text(processor, prompt, image)["input_ids"][0]
    return _response_row(processor, prompt_ids, prompt, response, image, separator, append_eos)


def encode_pair_rows(processor, pair: PreferencePair, image=None, *, separator: str = " ",
                     append_eos: bool = True) -> tuple[dict, dict]:
    """(chosen row, rejected row) of one pair, as `encode_row` makes them (the prompt encoded once)."""
    prompt_ids = _encode_text(processor, pair.prompt, image)["input_ids"][0]
    return tuple(_response_row(processor, prompt_ids, pair.prompt, response, image, separator, append_eos)
                 for response in (pair.chosen, pair.rejected))


def _response_row(processor, prompt_ids: torch.Tensor, prompt: str, response: str, image, separator: str,
                  append_eos: bool) -> dict:
    """encode_row given the prompt's own ids [P]."""
    row = _encode_text(processor, prompt + separator + response, image)
    ids = row["input_ids"][0]
    boundary = _common_prefix(prompt_ids, ids)
    labels = ids.clone()
    labels[:boundary] = IGNORE_INDEX
    eos = _tokenizer(processor).eos_token_id
    if append_eos and eos is not None and (len(ids) == 0 or int(ids[-1]) != eos):
        one = torch.ones(1, 1, dtype=row["input_ids"].dtype)
        row["input_ids"] = torch.cat([row["input_ids"], one * eos], dim=1)
        row["attention_mask"] = torch.cat([row["attention_mask"], torch.ones_like(one)], dim=1)
        for key in _TOKEN_KEYS:
            if key in row:
                row[key] = torch.cat([row[key], torch.zeros(1, 1, dtype=row[key].dtype)], dim=1)
        labels = torch.cat([labels, torch.tensor([eos], dtype=labels.dtype)])
    row["labels"] = labels[None]
    if int((row["labels"] != IGNORE_INDEX).sum()) == 0:
        raise ValueError(f"empty response after prompt {prompt!r}: nothing to score")
    return row


def collate_rows(rows: Sequence[dict], pad_token_id: int) -> dict:
    """Right-pad rows from `encode_row` into one batch: input_ids with pad_token_id, attention
    mask / per-token ids with 0, labels with IGNORE_INDEX; image tensors (pixel_values,
    image_sizes, image_grid_thw, ...) are concatenated along dim 0.

    Rows with and without an image mix: the image tensors hold the image rows' images in row
    order (each image's placeholder tokens sit in its own row, which is how the model pairs them),
    and a per-token key some rows lack is 0 there.

    Right padding keeps every row's real tokens at positions 0..n-1, which is what a plain forward
    (no position_ids) assumes."""
    width = max(row["input_ids"].shape[1] for row in rows)
    fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}
    batch = {}
    for key in dict.fromkeys(key for row in rows for key in row):  # every row's keys, in order
        if key in ("input_ids", "attention_mask", "labels") or key in _TOKEN_KEYS:
            values = [row[key][0] if key in row else torch.zeros_like(row["input_ids"][0]) for row in rows]
            batch[key] = torch.stack([F.pad(v, (0, width - len(v)), value=fill.get(key, 0)) for v in values])
        else:
            values = [row[key] for row in rows if isinstance(row.get(key), torch.Tensor)]
            if values:
                batch[key] = torch.cat(values, dim=0)
    return batch


def encode_pairs(processor, pairs: Sequence[PreferencePair | dict], images_root: str | os.PathLike | None = None,
                 *, separator: str = " ", append_eos: bool = True) -> dict:
    """A training batch for B pairs: 2B right-padded rows, the chosen responses first (rows 0..B-1),
    then the rejected ones (B..2B-1), each with its pair's image."""
    return collate_pairs(processor, [_load_and_encode(processor, _as_pair(p), images_root, separator, append_eos)
                                     for p in pairs])


def _load_and_encode(processor, pair: PreferencePair, images_root, separator: str, append_eos: bool
                     ) -> tuple[dict, dict]:
    """encode_pair_rows of a pair whose image is a path (under images_root), a PIL image or None."""
    image = None if pair.image is None else load_image(pair.image, images_root)
    return encode_pair_rows(processor, pair, image, separator=separator, append_eos=append_eos)


def collate_pairs(processor, encoded: Sequence[tuple[dict, dict]]) -> dict:
    """encode_pair_rows' (chosen, rejected) rows of B pairs as one batch of 2B rows, chosen first."""
    tokenizer = _tokenizer(processor)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [chosen for chosen, _ in encoded] + [rejected for _, rejected in encoded]
    return collate_rows(rows, pad if pad is not None else 0)


def _row_bytes(rows: Sequence[dict]) -> int:
    return sum(v.numel() * v.element_size() for row in rows for v in row.values() if isinstance(v, torch.Tensor))


# --- scoring and loss ---------------------------------------------------------------------------


def response_logprobs(model, batch: dict) -> torch.Tensor:
    """float32 [B]: per row, sum over positions t with labels[t] != IGNORE_INDEX of
    log p_model(labels[t] | tokens < t) (teacher forcing; logits at t-1 predict token t).

    batch: input_ids, attention_mask, labels [B, L] plus the model's image inputs. Right padding
    is expected (as `collate_rows` makes); left-padded rows get position_ids from the attention
    mask (text-only position ids: refused for multimodal-rope models, which need right padding)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    mask = inputs.get("attention_mask")
    if mask is not None and bool((mask[:, 0] == 0).any()) and "position_ids" not in inputs:
        if "image_grid_thw" in inputs:
            raise ValueError("left-padded rows for a multimodal-rope model: pad on the right (collate_rows)")
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(**inputs, use_cache=False).logits[:, :-1]
    target = labels[:, 1:]
    scored = target != IGNORE_INDEX
    rows = scored.nonzero()[:, 0]
    picked = logits[scored].float().log_softmax(-1).gather(-1, target[scored].unsqueeze(-1)).squeeze(-1)
    return torch.zeros(labels.shape[0], dtype=torch.float32, device=logits.device).index_add(0, rows, picked)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standard (sigmoid) DPO loss over [B] summed response log-probs.

    Returns (loss, chosen_rewards, rejected_rewards): loss is the batch mean of
    -log sigmoid(beta * ((pc - rc) - (pr - rr))); the rewards are beta * (policy - ref) per row,
    detached (the DPO implicit reward)."""
    logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(beta * logits).mean()
    return loss, (beta * (policy_chosen - ref_chosen)).detach(), (beta * (policy_rejected - ref_rejected)).detach()


# --- training -----------------------------------------------------------------------------------


def _to_device(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    return {k: v.to(device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in batch.items()}


def train_reward_dpo(model, processor, pairs: Iterable[PreferencePair | dict],
                     images_root: str | os.PathLike | None = None, *, beta: float = 0.1, lr: float = 1e-5,
                     epochs: int = 1, batch_size: int = 4, max_steps: int | None = None, seed: int = 0,
                     ref_model=None, weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
                     rpo_alpha: float = 0.0, separator: str = " ", append_eos: bool = True,
                     progress: bool = True, keep_encoded_bytes: int = 1 << 30) -> dict:
    """Train `model` (in place) with DPO on `pairs`; the reference is `ref_model` or, by default, a
    frozen deep copy of `model` as it starts.

    AdamW(lr, weight_decay) on the parameters that require grad, gradient norm clipped to
    max_grad_norm (None: off), pairs shuffled each epoch with `seed`, `batch_size` pairs per step
    (2 * batch_size rows per forward), `epochs` passes over the pairs or, when given, exactly
    `max_steps` steps (as in transformers' Trainer, max_steps overrides epochs). Dropout is off (the model stays
    in eval mode, as TRL's disable_dropout). Relative image paths are taken under images_root.
    rpo_alpha > 0 adds rpo_alpha times the chosen responses' mean per-token negative log-likelihood
    (RPO, Pang et al. 2024; TRL's `rpo_alpha`): it keeps DPO from lowering the chosen answers'
    likelihood along with the rejected ones', the collapse small models show after many steps.
    Each pair is encoded (tokenized, its image preprocessed) once and its rows kept for the later
    epochs, up to `keep_encoded_bytes` of tensors (0: encode every time; pairs past the budget
    are encoded at each use): the processor's work otherwise dominates a small model's step.

    Returns a dict: model (the trained model, in eval mode), losses, chosen_rewards,
    rejected_rewards, reward_accuracies (per step: batch means; accuracy = share of pairs whose
    chosen reward beats the rejected one), steps, seconds.
    """
    from tqdm.auto import tqdm

    pairs = [_as_pair(p) for p in pairs]
    if not pairs:
        raise ValueError("no preference pairs to train on")
    if rpo_alpha < 0:
        raise ValueError(f"rpo_alpha must be >= 0, got {rpo_alpha}")
    if keep_encoded_bytes < 0:
        raise ValueError(f"keep_encoded_bytes must be >= 0 (0: keep nothing), got {keep_encoded_bytes}")
    total = total_steps(len(pairs), batch_size, epochs, max_steps)
    if ref_model is None:
        ref_model = copy.deepcopy(model)
    ref_model.eval().requires_grad_(False)
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    device, dtype = params[0].device, next(p.dtype for p in model.parameters() if p.is_floating_point())

    history = {"losses": [], "chosen_rewards": [], "rejected_rewards": [], "reward_accuracies": []}
    bar = tqdm(total=total, desc="dpo", unit="step", disable=not progress)
    started, step = time.perf_counter(), 0
    kept: dict[int, tuple[dict, dict]] = {}
    kept_bytes = 0

    def encoded(i: int) -> tuple[dict, dict]:
        nonlocal kept_bytes
        if i in kept:
            return kept[i]
        rows = _load_and_encode(processor, pairs[i], images_root, separator, append_eos)
        size = _row_bytes(rows)
        if kept_bytes + size <= keep_encoded_bytes:
            kept[i], kept_bytes = rows, kept_bytes + size
        return rows

    for indices in index_batches(len(pairs), batch_size, total, seed):
        batch = _to_device(collate_pairs(processor, [encoded(i) for i in indices]), device, dtype)
        n = len(indices)
        policy = response_logprobs(model, batch)
        with torch.no_grad():
            ref = response_logprobs(ref_model, batch)
        loss, chosen, rejected = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], beta)
        if rpo_alpha:
            tokens = (batch["labels"][:n, 1:] != IGNORE_INDEX).sum()
            loss = loss - rpo_alpha * policy[:n].sum() / tokens
        optimizer_step(optimizer, params, loss, max_grad_norm)
        step += 1
        history["losses"].append(float(loss.detach()))
        history["chosen_rewards"].append(float(chosen.mean()))
        history["rejected_rewards"].append(float(rejected.mean()))
        history["reward_accuracies"].append(float((chosen > rejected).float().mean()))
        bar.update(1)
        bar.set_postfix(loss=f"{history['losses'][-1]:.4f}", acc=f"{history['reward_accuracies'][-1]:.2f}")
    bar.close()
    optimizer.zero_grad(set_to_none=True)
    return dict(model=model.eval(), steps=step, seconds=time.perf_counter() - started, **history)


def save_reward_model(model, processor, folder: str | os.PathLike) -> str:
    """Save a Hugging Face model folder (weights, config, generation config, processor or
    tokenizer) that `from_pretrained` / `guided_generate`'s loaders read back. Returns the folder.

    Crash-safe (`tita_ext.safe_write.atomic_folder`): the folder is written beside `folder` and
    replaces it whole once complete, with a manifest of its files; an interrupted save leaves any
    previous folder as it was (and no mix of old and new files)."""
    from ..safe_write import atomic_folder

    with atomic_folder(folder) as partial:
        model.save_pretrained(partial)
        processor.save_pretrained(partial)
    return str(folder)

"""Supervised fine-tuning (tita_ext.training.sft): encodes once, trains on the answer tokens only."""

from __future__ import annotations

import pytest
import torch

from tita_ext import tiny_models as tiny
from tita_ext.training.dpo import IGNORE_INDEX
from tita_ext.training.sft import encode_examples, train_sft
from tita_ext.world import World, qa_examples, render


def examples(n: int):
    world = World(seed=0, image_size=32)
    return [(render(scene), prompt, answer) for scene in world.scenes(n, "train")
            for prompt, answer in qa_examples(scene)]


def test_rows_score_the_answer_only():
    processor = tiny.tiny_llava_processor(tiny.tiny_tokenizer())
    (row,) = encode_examples(processor, examples(1)[1:2], progress=False)
    scored = row["labels"][0] != IGNORE_INDEX
    text = processor.tokenizer.decode(row["input_ids"][0][scored])
    assert text.strip() in ("Yes</s>", "No</s>")
    assert (row["input_ids"][0][~scored] == tiny.IMAGE_ID).sum() == 16  # the image tokens are masked


def test_training_lowers_the_loss_and_changes_the_weights():
    processor = tiny.tiny_llava_processor(tiny.tiny_tokenizer())
    rows = encode_examples(processor, examples(4), progress=False)
    model = tiny.tiny_llava(seed=0)
    before = model.lm_head.weight.detach().clone()
    out = train_sft(model, processor, rows, lr=3e-3, max_steps=12, batch_size=8, progress=False)
    assert out["steps"] == 12 and len(out["losses"]) == 12
    assert sum(out["losses"][-3:]) / 3 < out["losses"][0] * 0.75
    assert not torch.equal(before, model.lm_head.weight) and not model.training


def test_bad_arguments():
    processor = tiny.tiny_llava_processor(tiny.tiny_tokenizer())
    with pytest.raises(ValueError, match="no training rows"):
        train_sft(tiny.tiny_llava(), processor, [], progress=False)
    rows = encode_examples(processor, examples(1)[:2], progress=False)
    with pytest.raises(ValueError, match="must be >= 1"):
        train_sft(tiny.tiny_llava(), processor, rows, batch_size=0, progress=False)

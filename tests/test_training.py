"""Reward-model training: the noise schedule, the pair builder, JSONL storage, the DPO loss,
response log-probabilities and a two-step DPO run on tiny models (nothing downloaded)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

import tita_ext
from tita_ext.tiny_models import IMAGE_ID, demo_image, tiny_llama, tiny_llava, tiny_llava_processor, tiny_tokenizer
from tita_ext.training import (IGNORE_INDEX, PreferencePair, alpha_bars, build_pairs, collate_rows, dpo_loss,
                               encode_pairs, encode_row, greedy_answers, noise_image, read_pairs,
                               response_logprobs, save_reward_model, train_reward_dpo, write_pairs)

QUESTIONS = ("What is in the picture?", "Is there a cube in the image?")


@pytest.fixture(scope="module")
def processor():
    return tiny_llava_processor(tiny_tokenizer())


@pytest.fixture(scope="module")
def base():
    return tiny_llava(seed=0)


def gradient_image(size: int = 40) -> Image.Image:
    """An image with every channel varying, so noise has something to hide."""
    x = np.arange(size, dtype=np.uint8) * 6
    rgb = np.stack(np.broadcast_arrays(x[None, :], x[:, None], (x[None, :] + x[:, None]) // 2), axis=-1)
    return Image.fromarray(np.ascontiguousarray(rgb))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


# --- noise ---------------------------------------------------------------------------------------


def test_alpha_bars_match_hand_computation():
    abar = alpha_bars(1000)
    betas = [1e-4 + (0.02 - 1e-4) * t / 999 for t in range(1000)]
    for t in (0, 1, 2, 499, 999):
        assert abar[t].item() == pytest.approx(math.prod(1 - b for b in betas[:t + 1]), rel=1e-9)
    assert abar[0].item() == pytest.approx(0.9999)
    assert abar[1].item() == pytest.approx(0.9999 * (1 - (1e-4 + 0.0199 / 999)))
    assert 0.07 < abar[499].item() < 0.08 and abar[999].item() < 1e-4
    assert bool((abar[1:] < abar[:-1]).all())


def test_noise_step_zero_is_near_identity_and_last_step_is_noise():
    image = gradient_image()
    near = pixels(noise_image(image, step=0, seed=3)) - pixels(image)
    assert np.abs(near).mean() < 2.0  # sqrt(1 - abar_0) = 0.01 of the [-1, 1] range: about 1.3 levels
    # At step 999 sqrt(abar) < 0.01: the image is gone; two different images give (almost) the same noise.
    a, b = pixels(noise_image(image, step=999, seed=3)), pixels(noise_image(demo_image("blue"), step=999, seed=3))
    assert np.abs(a - b).max() <= 2.0
    assert a.std() > 80  # clamped standard normal over [0, 255]
    half = pixels(noise_image(image, step=500, seed=3)) - pixels(image)
    assert 20 < np.abs(half).mean() < np.abs(pixels(noise_image(image, step=999, seed=3)) - pixels(image)).mean()


def test_noise_is_deterministic_with_seed():
    image = demo_image("green")
    one, two = noise_image(image, seed=7), noise_image(image, seed=7)
    assert one.mode == "RGB" and one.size == image.size
    assert one.tobytes() == two.tobytes()
    assert one.tobytes() != noise_image(image, seed=8).tobytes()
    with pytest.raises(ValueError, match="step"):
        noise_image(image, step=1000)


# --- pairs ---------------------------------------------------------------------------------------


def items():
    return [(demo_image(color), q) for color in ("red", "blue", "white") for q in QUESTIONS]


def test_build_pairs_chosen_is_clean_answer_rejected_is_noised_answer(base, processor):
    data = items()
    pairs = build_pairs(base, processor, data, max_new_tokens=6, batch_size=4, seed=5, progress=False)
    prompts = [f"USER: <image>\n{q} ASSISTANT:" for _, q in data]
    clean = greedy_answers(base, processor, prompts, [img for img, _ in data], max_new_tokens=6)
    noised = greedy_answers(base, processor, prompts,
                            [noise_image(img, 500, seed=5 + i) for i, (img, _) in enumerate(data)], max_new_tokens=6)
    expected = [(p, c, r) for p, c, r in zip(prompts, clean, noised) if c != r]
    assert expected, "the tiny base should answer differently on some noised images"
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == expected


def test_build_pairs_drops_identical_pairs(processor):
    blind = tiny_llava(seed=0)  # projector zeroed: the image cannot change the answer
    with torch.no_grad():
        for param in blind.model.multi_modal_projector.parameters():
            param.zero_()
    assert build_pairs(blind, processor, items(), max_new_tokens=6, progress=False) == []


def test_build_pairs_labelled(base, processor):
    image = demo_image("red")
    prompt = f"USER: <image>\n{QUESTIONS[0]} ASSISTANT:"
    answer = greedy_answers(base, processor, [prompt], [image], max_new_tokens=6)[0]
    data = [(image, QUESTIONS[0], answer.upper() + "!"),  # same answer up to case/punctuation: dropped
            (image, QUESTIONS[0], "A red cube on a table.")]
    pairs = build_pairs(base, processor, data, labelled=True, max_new_tokens=6, progress=False)
    assert pairs == [PreferencePair(image, prompt, "A red cube on a table.", answer)]
    with pytest.raises(ValueError, match="answer"):
        build_pairs(base, processor, [(image, QUESTIONS[0])], labelled=True, progress=False)


def test_pairs_jsonl_round_trip(tmp_path):
    on_disk = tmp_path / "red.png"
    demo_image("red").save(on_disk)
    pairs = [PreferencePair(str(on_disk), "USER: <image>\nQ? ASSISTANT:", "A red cube.", "A blue ball."),
             PreferencePair(demo_image("blue"), "USER: <image>\nQ? ASSISTANT:", "Ünïcode \"quoted\"\nline", "no"),
             PreferencePair(Image.open(on_disk), "p", "c", "r")]
    with pytest.raises(ValueError, match="image_dir"):
        write_pairs(tmp_path / "x.jsonl", pairs)
    assert write_pairs(tmp_path / "pairs.jsonl", pairs, image_dir=tmp_path / "images") == 3
    back = read_pairs(tmp_path / "pairs.jsonl")
    assert back[0] == pairs[0]
    assert back[2] == PreferencePair(str(on_disk), "p", "c", "r")  # a file-backed image keeps its path
    assert (back[1].prompt, back[1].chosen, back[1].rejected) == (pairs[1].prompt, pairs[1].chosen, pairs[1].rejected)
    assert Image.open(back[1].image).tobytes() == demo_image("blue").tobytes()
    assert write_pairs(tmp_path / "again.jsonl", back) == 3
    assert read_pairs(tmp_path / "again.jsonl") == back


# --- loss and log-probs -------------------------------------------------------------------------


def test_dpo_loss_matches_hand_computation():
    pc, pr = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -2.0])
    rc, rr = torch.tensor([-2.0, -4.0]), torch.tensor([-2.0, -3.0])
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.1)
    # row 0: ((-1+2) - (-3+2)) = 2 -> -log sigmoid(0.2); row 1: (0 - 1) = -1 -> -log sigmoid(-0.1)
    hand = (math.log(1 + math.exp(-0.2)) + math.log(1 + math.exp(0.1))) / 2
    assert loss.item() == pytest.approx(hand, rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.1, 0.0]) and rejected.tolist() == pytest.approx([-0.1, 0.1])
    assert dpo_loss(pc, pr, pc, pr)[0].item() == pytest.approx(math.log(2))


def manual_logprob(model, row: dict) -> float:
    """Teacher forcing on one unpadded row: sum of log_softmax(logits[t-1])[ids[t]] over response t."""
    inputs = {k: v for k, v in row.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits[0].double()
    ids, labels = row["input_ids"][0], row["labels"][0]
    total = 0.0
    for t in range(1, len(ids)):
        if labels[t] != IGNORE_INDEX:
            total += logits[t - 1].log_softmax(-1)[ids[t]].item()
    return total


PAIRS = [PreferencePair(demo_image("red"), "USER: <image>\nWhat is in the picture? ASSISTANT:",
                        "A red cube on a table.", "A blue ball."),
         PreferencePair(demo_image("green"), "USER: <image>\nIs there a cube in the image? ASSISTANT:",
                        "No, there is no cube.", "Yes, there is a green cube next to a cup under a lamp.")]


def test_labels_cover_the_response_only(processor):
    row = encode_row(processor, PAIRS[0].prompt, PAIRS[0].chosen, PAIRS[0].image)
    prompt_ids = processor(text=[PAIRS[0].prompt], images=[PAIRS[0].image], return_tensors="pt")["input_ids"][0]
    labels = row["labels"][0]
    assert int((prompt_ids == IMAGE_ID).sum()) == 16  # the placeholder expanded inside the prompt
    assert bool((labels[:len(prompt_ids)] == IGNORE_INDEX).all())
    assert torch.equal(row["input_ids"][0][:len(prompt_ids)], prompt_ids)
    response = labels[len(prompt_ids):]
    assert bool((response != IGNORE_INDEX).all())
    assert processor.tokenizer.decode(response) == " A red cube on a table.</s>"


def test_response_logprobs_equal_manual_computation_llava(base, processor):
    batch = encode_pairs(processor, PAIRS)
    assert batch["input_ids"].shape[0] == 4 and bool((batch["attention_mask"][:, -1] == 0).any())  # right-padded
    got = response_logprobs(base, batch)
    rows = [encode_row(processor, p.prompt, p.chosen, p.image) for p in PAIRS]
    rows += [encode_row(processor, p.prompt, p.rejected, p.image) for p in PAIRS]
    want = torch.tensor([manual_logprob(base, row) for row in rows], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)
    # Left padding gives the same numbers (position ids from the attention mask).
    lengths = batch["attention_mask"].sum(1)
    left = {k: v.clone() for k, v in batch.items()}
    for key, fill in (("input_ids", 3), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
        for i, n in enumerate(lengths.tolist()):
            left[key][i] = torch.cat([torch.full((batch[key].shape[1] - n,), fill), batch[key][i, :n]])
    torch.testing.assert_close(response_logprobs(base, left), got, atol=1e-4, rtol=1e-5)


def test_response_logprobs_equal_manual_computation_causal_lm():
    model, tokenizer = tiny_llama(seed=2), tiny_tokenizer()
    texts = [("USER: What is in the picture? ASSISTANT:", "A red cube."), ("USER: Hi ASSISTANT:", "There is a ball.")]
    rows = [encode_row(tokenizer, p, r, None) for p, r in texts]
    got = response_logprobs(model, collate_rows(rows, tokenizer.pad_token_id))
    want = torch.tensor([manual_logprob(model, row) for row in rows], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


# --- training ------------------------------------------------------------------------------------


def test_two_step_dpo_trains_saves_and_guides(tmp_path, base, processor):
    red = tmp_path / "red.png"
    demo_image("red").save(red)
    write_pairs(tmp_path / "pairs.jsonl", [dataclasses.replace(PAIRS[0], image="red.png"), PAIRS[1]],
                image_dir=tmp_path / "images")
    pairs = read_pairs(tmp_path / "pairs.jsonl")
    reward = tiny_llava(seed=1, hidden_size=32, layers=1)
    before = {k: v.clone() for k, v in reward.state_dict().items()}
    result = train_reward_dpo(reward, processor, pairs, images_root=tmp_path, lr=1e-2, batch_size=2,
                              max_steps=2, progress=False)
    assert result["model"] is reward and result["steps"] == 2 and len(result["losses"]) == 2
    assert result["losses"][0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 0
    assert result["losses"][1] < result["losses"][0]
    changed = [k for k, v in reward.state_dict().items() if not torch.equal(v, before[k])]
    assert "lm_head.weight" in changed and any("vision_tower" in k for k in changed)
    assert all(p.requires_grad for p in reward.parameters())

    from transformers import AutoProcessor, LlavaForConditionalGeneration

    folder = save_reward_model(reward, processor, tmp_path / "reward")
    loaded = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    for key, value in reward.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    loaded_processor = AutoProcessor.from_pretrained(folder)
    inputs = loaded_processor(text=[PAIRS[0].prompt, PAIRS[1].prompt], images=[PAIRS[0].image, PAIRS[1].image],
                              return_tensors="pt", padding=True)
    out = tita_ext.guided_generate(base, loaded, inputs, alpha=0.6, max_new_tokens=4, tokenizer=loaded_processor)
    assert out.new_tokens.shape == (2, 4) and bool(out.token_rewards.abs().sum() > 0)


def test_same_losses_as_trl_dpo_trainer(tmp_path, processor):
    """Where TRL is installed (the optional extra): its DPOTrainer and ours take the same two steps.
    TRL's vision collator tokenizes the completion on its own (so it carries the leading space) and
    appends no EOS; its Trainer decays the learning rate linearly (step 1 at the full rate)."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    import copy

    ours = tiny_llava(seed=1)
    theirs = copy.deepcopy(ours)
    result = train_reward_dpo(ours, processor, PAIRS, lr=1e-3, batch_size=2, max_steps=2, append_eos=False,
                              progress=False)
    rows = [{"images": [p.image], "prompt": p.prompt, "chosen": " " + p.chosen, "rejected": " " + p.rejected}
            for p in PAIRS]
    args = trl.DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-3,
                         beta=0.1, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
                         remove_unused_columns=False, max_length=None)
    trainer = trl.DPOTrainer(model=theirs, ref_model=copy.deepcopy(theirs), args=args,
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=processor)
    trainer.train()
    first, second = [entry for entry in trainer.state.log_history if "loss" in entry]
    # Step 1 scores the untouched models: the same summed response log-probs (up to float32
    # summation order in the grad-enabled forward), loss ln 2.
    with torch.no_grad():
        logps = response_logprobs(tiny_llava(seed=1), encode_pairs(processor, PAIRS, append_eos=False))
    assert first["logps/chosen"] == pytest.approx(logps[:2].mean().item(), rel=1e-4)
    assert first["logps/rejected"] == pytest.approx(logps[2:].mean().item(), rel=1e-4)
    assert first["loss"] == pytest.approx(result["losses"][0], abs=1e-6)
    # Step 2 follows one AdamW step each (same rate): equal up to float summation order, which
    # Adam's first step turns into +-lr on near-zero gradient entries.
    assert second["loss"] == pytest.approx(result["losses"][1], abs=3e-3)
    assert second["rewards/chosen"] == pytest.approx(result["chosen_rewards"][1], abs=3e-3)
    assert second["rewards/rejected"] == pytest.approx(result["rejected_rewards"][1], abs=3e-3)


def test_rpo_alpha_adds_the_chosen_answers_mean_nll(processor):
    """At step 0 (policy == reference) the DPO term is log 2; rpo_alpha adds rpo_alpha times the
    chosen responses' per-token mean NLL under the starting model."""
    start = tiny_llava(seed=1, hidden_size=32, layers=1)
    batch = encode_pairs(processor, PAIRS)
    chosen_tokens = (batch["labels"][:2, 1:] != IGNORE_INDEX).sum()
    nll = -float(response_logprobs(start, batch)[:2].sum() / chosen_tokens)
    result = train_reward_dpo(start, processor, PAIRS, lr=1e-3, batch_size=2, max_steps=1, rpo_alpha=0.5,
                              progress=False)
    assert result["losses"][0] == pytest.approx(math.log(2) + 0.5 * nll, rel=1e-5)
    with pytest.raises(ValueError, match="rpo_alpha must be >= 0, got -0.1"):
        train_reward_dpo(start, processor, PAIRS, rpo_alpha=-0.1, progress=False)


def test_a_batch_mixing_image_and_text_only_pairs_scores_each_row_as_alone(base, processor):
    """Pairs with and without an image in one batch (a documented mix: image null): each row's
    response log-prob equals its pair scored alone (main: KeyError 'pixel_values', or the image
    dropped when the text-only pair came first)."""
    text_only = PreferencePair(None, "USER: Is the sky green? ASSISTANT:", "No.", "Yes.")
    with_image = PreferencePair(demo_image("red"), "USER: <image>\nWhat is it? ASSISTANT:", "A red cube.", "A ball.")
    with torch.no_grad():
        alone = {id(p): response_logprobs(base, encode_pairs(processor, [p])) for p in (text_only, with_image)}
        for order in ([text_only, with_image], [with_image, text_only]):
            batch = encode_pairs(processor, order)
            assert batch["pixel_values"].shape[0] == 2  # the image pair's image, for its chosen and rejected rows
            scores = response_logprobs(base, batch)
            for row, pair in enumerate(order):
                torch.testing.assert_close(scores[[row, row + 2]], alone[id(pair)])


def test_encoded_rows_kept_across_epochs_train_exactly_as_encoding_every_step(processor):
    """The pairs' encodings kept for later epochs (the default) give the same losses and weights as
    encoding every step (keep_encoded_bytes 0), and as a budget that keeps only some of them."""
    pairs = [PreferencePair(demo_image(c), "USER: <image>\nWhat colour is it? ASSISTANT:", c, o)
             for c, o in (("red", "blue"), ("blue", "green"), ("green", "red"))]
    runs = {}
    one_pair = sum(v.numel() * v.element_size() for v in encode_pairs(processor, pairs[:1]).values())  # ~ one kept
    for keep in (0, one_pair, 1 << 30):
        model = tiny_llava(seed=2, hidden_size=32, layers=1)
        result = train_reward_dpo(model, processor, pairs, lr=1e-3, batch_size=2, epochs=3, keep_encoded_bytes=keep,
                                  progress=False)
        runs[keep] = (result["losses"], [p.detach().clone() for p in model.parameters()])
    for keep in (one_pair, 1 << 30):
        assert runs[keep][0] == runs[0][0]
        assert all(torch.equal(a, b) for a, b in zip(runs[keep][1], runs[0][1]))
    with pytest.raises(ValueError, match="keep_encoded_bytes must be >= 0"):
        train_reward_dpo(tiny_llava(seed=2, hidden_size=32, layers=1), processor, pairs, keep_encoded_bytes=-1,
                         progress=False)


def test_encode_pairs_rows_are_encode_row_rows(processor):
    pair = PreferencePair(demo_image("red"), "USER: <image>\nWhat is it? ASSISTANT:", "A red cube.", "A ball.")
    batch = encode_pairs(processor, [pair])
    for row, response in enumerate((pair.chosen, pair.rejected)):
        alone = encode_row(processor, pair.prompt, response, pair.image)
        width = alone["input_ids"].shape[1]
        assert torch.equal(batch["labels"][row, :width], alone["labels"][0])
        assert torch.equal(batch["input_ids"][row, :width], alone["input_ids"][0])

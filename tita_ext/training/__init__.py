"""Training the TITA reward model: self-generated preference pairs (`pairs`) and DPO (`dpo`).

    pairs = build_pairs(base, processor, [(image, question), ...])     # clean vs noised answers
    write_pairs("pairs.jsonl", pairs, image_dir="images")
    result = train_reward_dpo(reward, processor, read_pairs("pairs.jsonl"), beta=0.1)
    save_reward_model(result["model"], processor, "reward-dpo")          # loadable by guided_generate
"""

from .dpo import (IGNORE_INDEX, collate_rows, dpo_loss, encode_pairs, encode_row, response_logprobs,
                  save_reward_model, train_reward_dpo)
from .pairs import (DEFAULT_PROMPT, PreferencePair, alpha_bars, build_pairs, greedy_answers, noise_image,
                    normalize_answer, read_pairs, same_answer, write_pairs)

__all__ = [
    "PreferencePair",
    "alpha_bars",
    "noise_image",
    "build_pairs",
    "greedy_answers",
    "normalize_answer",
    "same_answer",
    "write_pairs",
    "read_pairs",
    "DEFAULT_PROMPT",
    "IGNORE_INDEX",
    "encode_row",
    "collate_rows",
    "encode_pairs",
    "response_logprobs",
    "dpo_loss",
    "train_reward_dpo",
    "save_reward_model",
]

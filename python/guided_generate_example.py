"""Guided decoding of a vision-language model with tita_ext, the way a user's program calls it.

A base LLaVA is steered token by token by a smaller reward LLaVA that shares its tokenizer. Two
prompts of different lengths, each with its own image, run as one left-padded batch, sampled
with a seed (the same seed gives the same text).

    python3 python/guided_generate_example.py [--alpha A] [--seed S]
"""

from __future__ import annotations

import argparse

from tita_ext import guided_generate
from tita_ext.tiny_models import demo_image, tiny_llava, tiny_llava_processor, tiny_tokenizer


def main(alpha: float, seed: int) -> None:
    # Tiny models with random weights, built in code, so this runs anywhere in seconds. With real
    # checkpoints a user would write, e.g.:
    #   base = LlavaForConditionalGeneration.from_pretrained("llava-hf/llava-1.5-7b-hf")
    #   reward = LlavaForConditionalGeneration.from_pretrained("<your DPO-tuned small LLaVA>")
    #   processor = AutoProcessor.from_pretrained("llava-hf/llava-1.5-7b-hf")
    processor = tiny_llava_processor(tiny_tokenizer())
    base = tiny_llava(seed=0)
    reward = tiny_llava(seed=1, hidden_size=32, layers=1, vocab_width=448)  # narrower logits: fine

    prompts = ["USER: <image>\nWhat is in the picture? ASSISTANT:", "USER: <image>\nIs there a cube? ASSISTANT:"]
    images = [demo_image("red"), demo_image("blue")]
    processor.tokenizer.padding_side = "left"  # decoding appends after the last position
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")

    out = guided_generate(base, reward, inputs, alpha=alpha, do_sample=True, temperature=0.8, top_p=0.95,
                          max_new_tokens=12, seed=seed, tokenizer=processor)

    texts = processor.batch_decode(out.new_tokens, skip_special_tokens=True)
    for row, text in enumerate(texts):
        length = int(out.lengths[row])
        reward_mean = out.token_rewards[row, :length].mean()
        print(f"row {row}: {text!r}")
        print(f"       {length} tokens ({out.finish_reason[row]}), mean token reward {reward_mean:+.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    main(args.alpha, args.seed)

"""TitaForCausalLM in vLLM's offline engine: greedy tokens equal guided_generate's, per-request alphas
in one batch, seeded sampling, bad alpha. One engine for the module (a start costs 20-50 s).

Runs where vLLM is installed (.ci/vllm.sh makes that venv); skipped elsewhere.
"""

from __future__ import annotations

import pytest

vllm = pytest.importorskip("vllm")

import torch  # noqa: E402

from tita_ext import guided_generate  # noqa: E402
from tita_ext.tiny_models import EOS_ID, tiny_tokenizer  # noqa: E402
from tita_ext.vllm.alpha import TitaAlphaProcessor  # noqa: E402
from tita_ext.vllm.export import export_vllm  # noqa: E402
from tita_ext.vllm.layout import ALPHA_PROCESSOR  # noqa: E402
from tita_ext.vllm.tiny_pair import save_trio, tiny_trio  # noqa: E402

# Different lengths (1 to 16 tokens); requests join and leave the batch since max_num_seqs < count.
PROMPTS = ["There", "USER: What is in the picture? ASSISTANT:", "Is there a red cube in the image?",
           "A blue ball on a table next to a cup under a lamp in a box on the floor.", "No, there is",
           "There is a green star near a window.", "ring", "USER: Is there a cone? ASSISTANT: Yes,"]
MAX_NEW = 12
DEFAULT_ALPHA = 0.6
# Small and eager: a 64 MiB KV cache (the CPU backend otherwise reserves 92% of the machine's memory)
# and no torch.compile warm-up (about a minute here).
ENGINE_ARGS = dict(dtype="float32", max_model_len=128, max_num_seqs=4, seed=0, kv_cache_memory_bytes=1 << 26,
                   enforce_eager=True)


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    models = tiny_trio()
    folders = save_trio(tmp_path_factory.mktemp("trio"), models)
    return models, folders


@pytest.fixture(scope="module")
def llm(trio, tmp_path_factory):
    _, folders = trio
    out = export_vllm(folders["base"], folders["reward"], tmp_path_factory.mktemp("export") / "tita",
                      alpha=DEFAULT_ALPHA)
    engine = vllm.LLM(model=str(out), logits_processors=[TitaAlphaProcessor], **ENGINE_ARGS)
    yield engine
    engine.llm_engine.engine_core.shutdown()


def prompt_ids() -> list[list[int]]:
    tokenizer = tiny_tokenizer()
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


def guided_tokens(models, ids: list[list[int]], alphas: list[float], ref: bool = False) -> list[list[int]]:
    """guided_generate's greedy new tokens per prompt (up to and with EOS), left-padded batch."""
    tokenizer = tiny_tokenizer()
    batch = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    out = guided_generate(models["base"], models["reward"], dict(batch), ref_model=models["ref"] if ref else None,
                          alpha=alphas, do_sample=False, max_new_tokens=MAX_NEW, tokenizer=tokenizer,
                          use_cuda_graph=False)
    return [row[:n].tolist() for row, n in zip(out.new_tokens, out.lengths)]


def vllm_tokens(llm, ids: list[list[int]], params: list) -> list[list[int]]:
    outputs = llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def greedy(alpha: float | None = None, **kwargs) -> vllm.SamplingParams:
    extra = {"tita_alpha": alpha} if alpha is not None else None
    return vllm.SamplingParams(temperature=0.0, max_tokens=MAX_NEW, extra_args=extra, **kwargs)


def test_the_processor_name_printed_and_logged_is_the_class():
    assert f"{TitaAlphaProcessor.__module__}:{TitaAlphaProcessor.__qualname__}" == ALPHA_PROCESSOR


def test_greedy_tokens_equal_guided_generate(trio, llm):
    models, _ = trio
    ids = prompt_ids()
    expected = guided_tokens(models, ids, [DEFAULT_ALPHA] * len(ids))
    assert vllm_tokens(llm, ids, [greedy()] * len(ids)) == expected
    assert any(len(t) == MAX_NEW for t in expected) and len({tuple(t) for t in expected}) > 1
    # alone (batch of one) the same
    assert [vllm_tokens(llm, [p], [greedy()])[0] for p in ids[:3]] == expected[:3]


def test_mixed_per_request_alphas_in_one_batch(trio, llm):
    models, _ = trio
    ids = prompt_ids() * 2
    alphas = [0.0, 0.3, 0.6, 1.0, 1.5, 0.0, 1.0, 0.3] + [1.0, 0.6, 0.0, 0.3, 0.3, 1.5, 0.6, 0.0]
    expected = guided_tokens(models, ids, alphas)
    got = vllm_tokens(llm, ids, [greedy(a) for a in alphas])
    assert got == expected
    # alpha changes the text: the test would notice a processor that ignored the requests' alphas
    by_alpha = {a: [t for t, b in zip(expected, alphas) if b == a] for a in (0.0, 1.0)}
    assert by_alpha[0.0][0] != by_alpha[1.0][0] or by_alpha[0.0][1] != by_alpha[1.0][1]


def test_alpha_zero_is_the_base_model_alone(trio, llm):
    """alpha 0 against the base model's own greedy decoding in transformers (a narrower reward
    vocabulary does not leak in)."""
    models, _ = trio
    tokenizer = tiny_tokenizer()
    ids = prompt_ids()[:4]
    got = vllm_tokens(llm, ids, [greedy(0.0)] * len(ids))
    for prompt, tokens in zip(ids, got):
        with torch.no_grad():
            out = models["base"].generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=MAX_NEW,
                                          eos_token_id=EOS_ID, pad_token_id=tokenizer.pad_token_id)
        expected = out[0, len(prompt):].tolist()
        assert tokens == expected[:len(tokens)] and len(tokens) == len(expected)


def test_seeded_sampling_is_reproducible_and_batch_order_independent(llm):
    ids = prompt_ids()
    params = [vllm.SamplingParams(temperature=1.0, top_k=40, max_tokens=MAX_NEW, seed=100 + i, ignore_eos=True,
                                  extra_args={"tita_alpha": 0.3 * (i % 3)}) for i in range(len(ids))]
    first = vllm_tokens(llm, ids, params)
    again = vllm_tokens(llm, ids, params)
    reversed_order = vllm_tokens(llm, ids[::-1], params[::-1])[::-1]
    assert first == again == reversed_order
    other_seeds = [p.clone() for p in params]
    for p in other_seeds:
        p.seed += 1000
    assert vllm_tokens(llm, ids, other_seeds) != first  # it samples


@pytest.mark.parametrize("alpha", ["0.5", float("nan"), float("inf"), True])
def test_bad_alpha_is_refused_with_a_clear_error(llm, alpha):
    from vllm.exceptions import VLLMValidationError

    with pytest.raises((ValueError, VLLMValidationError), match=r"tita_alpha must be a finite number \(0: the base model alone"):
        llm.generate([{"prompt_token_ids": [5, 6]}], greedy(alpha), use_tqdm=False)

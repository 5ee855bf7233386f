"""The POPE harness: answer each split's yes/no questions with the base model alone and with TITA
at a sweep of alphas, score them, and write a results JSON and a plot of F1 against alpha.

Question files are JSON lines, one question per line: {"image": "path relative to the image
folder", "question": "Is there a dog in the image?", "label": "yes" | "no"} (the official POPE
files' "text" key is read as "question" too; other keys are ignored).

Several processes: under torchrun or accelerate launch (RANK / WORLD_SIZE / LOCAL_RANK in the
environment) `evaluate_pope` answers only its rank's share of each split (`shard_questions`,
strided), gathers every rank's answers back in the file's order (`gather_answers`, gloo) and
scores them once, so every rank returns the metrics of the whole split, equal to a single
process's; only rank 0 draws progress bars. The caller writes files on `Shard.is_main` only (as
`tita-ext eval-pope` does). See `tita_ext.eval.sharding`.
"""

from __future__ import annotations

import pathlib
import time
from typing import IO, Any, Iterable, Mapping, Sequence

import torch

from ..adapters.runner import model_device
from ..generate import guided_generate
from ..prompt_inputs import Preprocessor, build_inputs, family_of
from ..setup_checks import text_tokenizer
from .pope import normalize_label, parse_answer, pope_metrics
from .sharding import Shard, detect_shard, gather_answers, shard_questions

POPE_TEMPLATE = "USER: <image>\n{question} Answer yes or no. ASSISTANT:"
SPLITS = ("random", "popular", "adversarial")
DEFAULT_ALPHAS = (0.0, 0.3, 0.6, 1.0)
SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")

Question = Mapping[str, Any]


# --------------------------------------------------------------------------- questions and inputs

QUESTION_KEYS = "keys image, question (or text), label"


def load_questions(path: str | pathlib.Path, limit: int | None = None,
                   image_folder: str | pathlib.Path | None = None) -> list[dict[str, str]]:
    """A POPE JSON-lines file as [{"image", "question", "label", "line"}] (the first `limit` lines;
    "line" is "FILE:LINE", for messages). With
    `image_folder`, every image is checked to exist there (before any model runs). Errors name
    the file, the line and the key; a file without questions is an error."""
    from ..jsonl import image_file, read_json_lines

    questions, checked = [], set()
    for where, record in read_json_lines(path, QUESTION_KEYS):
        if limit is not None and len(questions) >= limit:
            break
        question = as_question(record, where)
        if image_folder is not None and question["image"] not in checked:  # POPE asks ~18 questions an image
            image_file(pathlib.Path(image_folder), question["image"], where)
            checked.add(question["image"])
        questions.append(dict(question, line=where))
    if not questions:
        raise ValueError(f"{path} holds no questions ({QUESTION_KEYS}, one JSON object a line)")
    return questions


def as_question(record: Question, where: str = "a question") -> dict[str, str]:
    """{"image", "question", "label"} from a POPE record ("text" read as "question", label
    normalised); a ValueError naming `where` and the key for a missing key or a value that is
    not a string."""
    from ..jsonl import InputFileError, json_type, string_field

    if not isinstance(record, Mapping):
        raise InputFileError(f"{where}: expected a JSON object with {QUESTION_KEYS}, got {json_type(record)}")
    key = "question" if "question" in record or "text" not in record else "text"
    values = {name: string_field(dict(record), name, where, QUESTION_KEYS) for name in ("image", key, "label")}
    try:
        label = normalize_label(values["label"])
    except ValueError as error:
        raise InputFileError(f"{where}: 'label': {error}") from None
    return {"image": values["image"], "question": values[key], "label": label}


def as_preprocessor(processor: Any, base: torch.nn.Module) -> Preprocessor:
    """A `Preprocessor` as it is, or one around a processor/tokenizer, of the base model's family."""
    if isinstance(processor, Preprocessor):
        return processor
    family = family_of(base.config.model_type)
    if hasattr(processor, "tokenizer"):
        return Preprocessor(family, processor.tokenizer, processor=processor)
    return Preprocessor(family, processor)


def make_prompt(template: str, question: str, pre: Preprocessor) -> str:
    """The template with the question; its "<image>" becomes the model's own image placeholder."""
    prompt = template.format(question=question)
    token = pre.image_token
    if token and token != "<image>":
        prompt = prompt.replace("<image>", token)
    return prompt


def reward_row(reward_pre: Preprocessor, base_pre: Preprocessor, template: str, question: str, image):
    """One row of the reward model's inputs when its family differs from the base's; a text-only
    reward model gets the prompt without the image placeholder and without the image."""
    if reward_pre.is_vlm:
        return build_inputs(reward_pre, make_prompt(template, question, reward_pre), image)
    prompt = make_prompt(template, question, base_pre).replace(base_pre.image_token or "<image>", "")
    return build_inputs(reward_pre, prompt.replace("<image>", ""), None)


def collate_left(rows: Sequence[Mapping[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch from single-row inputs: the token tensors ([1, L_i]) left-padded to [B, max L]
    (input_ids with pad_id, masks with 0); every other tensor (pixel_values [1, 3, H, W] or
    Qwen's [patches, D], image_grid_thw, image_sizes) concatenated along dim 0."""
    length = max(row["input_ids"].shape[1] for row in rows)
    batch: dict[str, torch.Tensor] = {}
    for key in rows[0].keys():
        values = [row[key] for row in rows]
        if key in SEQUENCE_KEYS:
            fill = pad_id if key == "input_ids" else 0
            values = [torch.nn.functional.pad(v, (length - v.shape[1], 0), value=fill) for v in values]
        batch[key] = torch.cat(values, dim=0)
    return batch


def _pad_id(tokenizer: Any, base: torch.nn.Module) -> int:
    for source in (text_tokenizer(tokenizer), base.generation_config):
        value = getattr(source, "pad_token_id", None)
        if value is not None:
            return int(value)
    return 0


def _load_image(folder: pathlib.Path, name: str):
    from PIL import Image

    with Image.open(folder / name) as image:
        return image.convert("RGB")


def _batches(items: Sequence[Question], size: int) -> Iterable[Sequence[Question]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _split_questions(split: str, records: Sequence[Question] | str | pathlib.Path,
                     folder: pathlib.Path) -> list[dict[str, str]]:
    """A split's questions from a file or records, every image checked to exist in `folder`."""
    from ..jsonl import image_file

    if isinstance(records, (str, pathlib.Path)):
        return load_questions(records, image_folder=folder)
    items = [as_question(record, f"{split} question {number}") for number, record in enumerate(records)]
    first: dict[str, int] = {}  # each image checked once, named by its first question
    for number, question in enumerate(items):
        first.setdefault(question["image"], number)
    for image, number in first.items():
        image_file(folder, image, f"{split} question {number}")
    return items


# --------------------------------------------------------------------------- evaluation

def answer_batch(base: torch.nn.Module, reward: torch.nn.Module, inputs: Mapping[str, torch.Tensor], alpha: float,
                 tokenizer: Any, max_new_tokens: int, reward_inputs: Mapping[str, torch.Tensor] | None = None,
                 ref_model: torch.nn.Module | None = None) -> list[str]:
    """Greedy TITA answers (alpha 0: the base model alone) for one left-padded batch, decoded
    without special tokens: B strings. A `ref_model` (of the reward model's family) reads the
    reward model's inputs."""
    ref_inputs = None if ref_model is None else reward_inputs
    out = guided_generate(base, reward, inputs, reward_inputs=reward_inputs, ref_model=ref_model,
                          ref_inputs=ref_inputs, alpha=alpha, do_sample=False,
                          max_new_tokens=max_new_tokens, tokenizer=tokenizer,
                          pad_token_id=_pad_id(tokenizer, base))
    decoder = text_tokenizer(tokenizer)
    return [decoder.decode(out.new_tokens[row, :int(out.lengths[row])].tolist(), skip_special_tokens=True)
            for row in range(out.new_tokens.shape[0])]


def evaluate_pope(base: torch.nn.Module, reward: torch.nn.Module, processor: Any,
                  questions: Mapping[str, Sequence[Question] | str | pathlib.Path],
                  image_folder: str | pathlib.Path, alphas: Sequence[float] = DEFAULT_ALPHAS, *,
                  batch_size: int = 8, max_new_tokens: int = 4, tokenizer: Any = None,
                  template: str = POPE_TEMPLATE, reward_processor: Any = None, unparsed: str = "no",
                  keep_answers: bool = False, progress: bool = True, shard: Shard | None = None,
                  ref_model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Answer every split's questions with the base alone and TITA at each alpha; score them.

    Args:
        base, reward: the models, as for `guided_generate` (one device, a shared tokenizer).
        processor: the base model's `Preprocessor`, processor or tokenizer.
        questions: split name -> question records ({"image", "question", "label"}) or the path
            of a POPE JSON-lines file.
        image_folder: the folder the records' image paths are relative to.
        alphas: the guidance weights to sweep. The base alone is guided_generate at alpha 0
            (s = log p_base exactly), decoded once: an alpha of 0 in the sweep reuses it.
        batch_size: questions per left-padded batch (each batch is decoded once per alpha).
        max_new_tokens: tokens per answer (a yes/no needs few); greedy decoding.
        tokenizer: decodes the answers (default: the processor's tokenizer).
        template: the prompt, with "{question}" and the image placeholder "<image>".
        reward_processor: the reward model's own processor when its family differs from the base's.
        unparsed: what an undecidable answer counts as ("no"; see `tita_ext.eval.pope`).
        keep_answers: also return each split's raw answer texts.
        progress: tqdm bars, one per split, over its questions (on rank 0 only).
        shard: this process's `Shard` (default: `detect_shard()`, from a launcher's RANK /
            WORLD_SIZE / LOCAL_RANK; rank 0 of 1 without one). With several ranks each answers
            its share of every split and the answers are gathered onto every rank before
            scoring: every rank must call this with the same questions and settings, and gets
            the same results.
        ref_model: an explicit reference model (the reward model before DPO: TITA's emulated
            fine-tuning form, s = log p_base + alpha (log p_reward - log p_ref)); None: p_ref = p_base.

    Returns:
        {"splits": {split: {"base": metrics, "alphas": {alpha: metrics}, "seconds": float,
        ["answers": {"base": [str], alpha: [str]}]}}, "alphas": [float], "template": str,
        "max_new_tokens": int, "batch_size": int, "unparsed": str, "world_size": int, "seconds": float};
        metrics as `pope_metrics` returns them (0-100 scale).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    pre = as_preprocessor(processor, base)
    reward_pre = as_preprocessor(reward_processor, reward) if reward_processor is not None else None
    tokenizer = tokenizer if tokenizer is not None else pre.tokenizer
    pad_id = _pad_id(tokenizer, base)
    folder = pathlib.Path(image_folder)
    sweep = [float(a) for a in alphas]
    runs: list[float] = [0.0] + [a for a in dict.fromkeys(sweep) if a != 0.0]  # the base first, each alpha once
    device = model_device(base)  # where the inputs go (the input embeddings', also under a device_map)
    shard = detect_shard() if shard is None else shard
    started = time.perf_counter()
    results: dict[str, Any] = {"splits": {}}
    splits = {split: _split_questions(split, records, folder) for split, records in questions.items()}
    for split, items in splits.items():
        split_start = time.perf_counter()
        mine = shard_questions(items, shard)
        answers: dict[float, list[str]] = {alpha: [] for alpha in runs}
        desc = f"POPE {split}" + (f" (rank 0 of {shard.world_size})" if shard.distributed else "")
        bar = tqdm(total=len(mine), desc=desc, unit="q", disable=not (progress and shard.is_main))
        for chunk in _batches([q for _, q in mine], batch_size):
            images = [_load_image(folder, q["image"]) for q in chunk]
            prompts = [make_prompt(template, q["question"], pre) for q in chunk]
            inputs = collate_left([build_inputs(pre, p, im) for p, im in zip(prompts, images)], pad_id)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            reward_inputs = None
            if reward_pre is not None:
                reward_inputs = collate_left([reward_row(reward_pre, pre, template, q["question"], im)
                                              for q, im in zip(chunk, images)], _pad_id(reward_pre.tokenizer, reward))
                reward_inputs = {k: v.to(device) for k, v in reward_inputs.items()}
            for alpha in runs:
                answers[alpha] += answer_batch(base, reward, inputs, alpha, tokenizer, max_new_tokens, reward_inputs,
                                              ref_model)
            bar.update(len(chunk))
        bar.close()
        if shard.distributed:  # every rank's answers, in the split's order, on every rank
            local = [(index, tuple(answers[a][row] for a in runs)) for row, (index, _) in enumerate(mine)]
            rows = gather_answers(local, shard, len(items))
            answers = {alpha: [row[column] for row in rows] for column, alpha in enumerate(runs)}
        labels = [q["label"] for q in items]
        scores = {alpha: pope_metrics(labels, [parse_answer(t) for t in texts], unparsed=unparsed)
                  for alpha, texts in answers.items()}
        split_result: dict[str, Any] = {"base": scores[0.0], "alphas": {a: scores[a] for a in sweep},
                                        "seconds": time.perf_counter() - split_start}
        if keep_answers:
            split_result["answers"] = {"base": answers[0.0], **{a: answers[a] for a in sweep}}
        results["splits"][split] = split_result
    results.update(alphas=sweep, template=template, max_new_tokens=max_new_tokens, batch_size=batch_size,
                   unparsed=unparsed, world_size=shard.world_size, seconds=time.perf_counter() - started)
    return results


# --------------------------------------------------------------------------- reporting

def _json_ready(value: Any) -> Any:
    """Float dict keys (alphas) as strings ("0.3"), recursively."""
    if isinstance(value, Mapping):
        return {(repr(k) if isinstance(k, float) else str(k)): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def format_table(results: Mapping[str, Any]) -> str:
    """A text table: one line per split and setting (base, then each alpha), the metrics in %."""
    lines = [f"{'split':<12} {'setting':<11} {'acc':>6} {'prec':>6} {'rec':>6} {'f1':>6} {'yes%':>6} {'n':>6}"]
    for split, result in results["splits"].items():
        settings = [("base", result["base"])] + [(f"alpha {a:g}", m) for a, m in result["alphas"].items()]
        for name, m in settings:
            lines.append(f"{split:<12} {name:<11} {m['accuracy']:>6.1f} {m['precision']:>6.1f} {m['recall']:>6.1f} "
                         f"{m['f1']:>6.1f} {m['yes_ratio']:>6.1f} {m['n']:>6d}")
    return "\n".join(lines)


def plot_f1(results: Mapping[str, Any], png_path: str | pathlib.Path | IO[bytes]) -> None:
    """F1 against alpha, one line per split; the base is the point at alpha 0 (a PNG, to a path
    or a binary file)."""
    from matplotlib.figure import Figure  # no pyplot: the user's backend is left alone

    fig = Figure(figsize=(5.5, 3.8), dpi=120)
    ax = fig.subplots()
    for split, result in results["splits"].items():
        points = {0.0: result["base"]["f1"]}
        points.update({float(a): m["f1"] for a, m in result["alphas"].items()})
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=split)
    ax.set_xlabel("alpha (0: base model alone)")
    ax.set_ylabel("F1 (%)")
    ax.set_title("POPE F1 against the guidance weight")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, format="png")


def write_results(results: Mapping[str, Any], json_path: str | pathlib.Path | None,
                  png_path: str | pathlib.Path | None) -> None:
    """The results as JSON (alpha keys as strings) and the F1-against-alpha plot as a PNG
    (needs matplotlib); either path may be None (or empty) to skip it. Parent folders are created.
    Both are written crash-safe (`tita_ext.safe_write`): a file is the old one or the new one,
    never part of one."""
    from ..safe_write import atomic_file, write_json

    if png_path:  # the plot first: the JSON, written last, is the run's completion mark
        with atomic_file(png_path, "wb") as png:
            plot_f1(results, png)
    if json_path is not None:
        write_json(json_path, _json_ready(results))

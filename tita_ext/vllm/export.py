"""Write one folder that vLLM loads as the TITA composite (`TitaForCausalLM`): see layout.py.

No vLLM import: exporting needs only transformers and safetensors.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any

from ..safe_write import atomic_folder
from ..setup_checks import check_tokenizers, text_tokenizer
from .layout import ARCHITECTURE, CONFIG_KEY, TitaSpec, check_alpha

INDEX_FILE = "model.safetensors.index.json"
# Copied from the base folder when present: vLLM reads its default sampling settings from it.
BASE_EXTRAS = ("generation_config.json",)


def _read_config(role: str, folder: pathlib.Path) -> dict[str, Any]:
    """The folder's config.json as a dict; only causal language models can be towers."""
    if not folder.is_dir():
        raise ValueError(f"--{role} folder {str(folder)!r} does not exist")
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"--{role} folder {str(folder)!r} has no config.json: give a folder saved with "
                         "save_pretrained")
    config = json.loads(path.read_text())
    architectures = config.get("architectures") or []
    if ARCHITECTURE in architectures or CONFIG_KEY in config:
        raise ValueError(f"--{role} folder {str(folder)!r} is already a TITA export: give the original model folders")
    if "vision_config" in config or not any(a.endswith("ForCausalLM") for a in architectures):
        raise ValueError(f"--{role} folder {str(folder)!r} holds {', '.join(architectures) or 'no architecture'}: "
                         "export-vllm combines causal language models (…ForCausalLM) that read the same prompt "
                         "tokens; vision-language pairs are not supported on vLLM yet (README: Serving with vLLM)")
    if not isinstance(config.get("vocab_size"), int):
        raise ValueError(f"--{role} folder {str(folder)!r}: config.json has no integer vocab_size")
    return config


def _weight_files(role: str, folder: pathlib.Path) -> list[pathlib.Path]:
    """The folder's safetensors files (all shards of a sharded checkpoint)."""
    index = folder / INDEX_FILE
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / name for name in names]
    else:
        files = sorted(folder.glob("*.safetensors"))
    missing = [str(f) for f in files if not f.is_file()]
    if not files or missing:
        raise ValueError(f"--{role} folder {str(folder)!r} has no safetensors weights{' (missing: ' + ', '.join(missing) + ')' if missing else ''}: "
                         "save the model with save_pretrained (safetensors is its default)")
    return files


def _copy_weights(role: str, files: list[pathlib.Path], out: pathlib.Path, weight_map: dict[str, str]) -> int:
    """Rewrite each shard with every name prefixed by `role.`, one shard in memory at a time;
    returns the bytes written and fills weight_map (prefixed name -> file name)."""
    from safetensors.torch import load_file, save_file

    total = 0
    for number, source in enumerate(files, start=1):
        name = f"{role}-{number:05d}-of-{len(files):05d}.safetensors"
        tensors = {f"{role}.{key}": value for key, value in load_file(str(source)).items()}
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        for key, value in tensors.items():
            weight_map[key] = name
            total += value.numel() * value.element_size()
    return total


def _write(folders: dict[str, pathlib.Path], configs: dict[str, dict], base_tokenizer, spec: TitaSpec,
           out: pathlib.Path) -> None:
    config = dict(configs["base"])
    config["architectures"] = [ARCHITECTURE]
    positions = [c["max_position_embeddings"] for c in configs.values() if "max_position_embeddings" in c]
    if positions:
        config["max_position_embeddings"] = min(positions)
    config[CONFIG_KEY] = spec.to_dict()
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    base_tokenizer.save_pretrained(str(out))
    for extra in BASE_EXTRAS:
        if (folders["base"] / extra).is_file():
            shutil.copyfile(folders["base"] / extra, out / extra)
    weight_map: dict[str, str] = {}
    total = sum(_copy_weights(role, _weight_files(role, folder), out, weight_map) for role, folder in folders.items())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _default_permissions(folder: pathlib.Path) -> None:
    """safetensors creates owner-only files: give them the permissions a plain open would (the
    process umask)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def export_vllm(base: str | pathlib.Path, reward: str | pathlib.Path, out: str | pathlib.Path, *,
                ref: str | pathlib.Path | None = None, alpha: float = 0.6, overwrite: bool = False) -> pathlib.Path:
    """Write the TITA composite of local Hugging Face causal-LM folders to `out`; returns its path.

    The tokenizers must agree over their shared range (the check and message of guided_generate);
    every problem is reported before anything is written. The folder appears complete or not at
    all (tita_ext.safe_write.atomic_folder: a hidden sibling, fsynced, renamed; with a manifest of
    every file's sha256). An existing `out` is replaced only with overwrite=True."""
    from transformers import AutoTokenizer

    alpha = check_alpha(alpha, "--alpha")
    out = pathlib.Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"--out {str(out)!r} already exists: choose a new folder or pass --overwrite")
    folders = {"base": pathlib.Path(base), "reward": pathlib.Path(reward)}
    if ref is not None:
        folders["ref"] = pathlib.Path(ref)
    configs = {role: _read_config(role, folder) for role, folder in folders.items()}
    for role, folder in folders.items():
        _weight_files(role, folder)  # fail before writing anything
    tokenizers = {role: text_tokenizer(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))
                  for role, folder in folders.items()}
    for role in folders:
        if role != "base":
            check_tokenizers(tokenizers["base"], tokenizers[role], role)
    limit = min([len(tokenizers["base"])] + [c["vocab_size"] for c in configs.values()])
    spec = TitaSpec(alpha=alpha, vocab_limit=limit, towers=configs)

    with atomic_folder(out) as partial:  # replaces an old `out` only once the new one is complete
        _write(folders, configs, tokenizers["base"], spec, partial)
        _default_permissions(partial)
    return out

"""`tita-ext export-vllm` and the exported folder's layout (no vLLM needed: runs in the main CI venv)."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from tita_ext.cli import main
from tita_ext.tiny_models import tiny_tokenizer
from tita_ext.vllm.export import INDEX_FILE, export_vllm
from tita_ext.vllm.layout import ARCHITECTURE, TitaSpec, check_alpha
from tita_ext.vllm.tiny_pair import save_trio, tiny_trio


@pytest.fixture(scope="module")
def trio(tmp_path_factory) -> dict[str, pathlib.Path]:
    return save_trio(tmp_path_factory.mktemp("trio"), tiny_trio())


def test_export_writes_config_weights_and_tokenizer(trio, tmp_path):
    out = export_vllm(trio["base"], trio["reward"], tmp_path / "tita", ref=trio["ref"], alpha=0.3)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE]
    assert config["model_type"] == "llama" and config["vocab_size"] == 512  # the base's: the logits' width
    spec = TitaSpec.from_config(config)
    assert spec.alpha == 0.3
    assert spec.vocab_limit == len(tiny_tokenizer())  # narrower than every width (512, 448, 480)
    assert [spec.towers[r]["architectures"] for r in ("base", "reward", "ref")] == [
        ["LlamaForCausalLM"], ["Qwen2ForCausalLM"], ["LlamaForCausalLM"]]
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()

    from safetensors.torch import load_file

    weight_map = json.loads((out / INDEX_FILE).read_text())["weight_map"]
    models = tiny_trio()
    for role, model in models.items():
        expected = {f"{role}.{name}": tensor for name, tensor in model.state_dict().items()}
        stored = {}
        for name in {weight_map[key] for key in expected}:
            stored.update(load_file(str(out / name)))
        assert set(expected) <= set(stored)
        for key, tensor in expected.items():
            torch.testing.assert_close(stored[key], tensor, rtol=0, atol=0)
    assert set(weight_map) == {k for role, m in models.items() for k in (f"{role}.{n}" for n in m.state_dict())}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_cli_exports_and_refuses_an_existing_folder(trio, tmp_path, capsys):
    argv = ["export-vllm", "--base", str(trio["base"]), "--reward", str(trio["reward"]), "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"api_server --model {tmp_path / 'o'} --logits-processors tita_ext.vllm.alpha:TitaAlphaProcessor" in printed
    before = (tmp_path / "o" / "config.json").read_text()
    assert main(argv + ["--alpha", "1"]) == 2
    assert "already exists: choose a new folder or pass --overwrite" in capsys.readouterr().err
    assert main(argv + ["--alpha", "1", "--overwrite"]) == 0
    after = json.loads((tmp_path / "o" / "config.json").read_text())
    assert after["tita"]["alpha"] == 1.0 and before != (tmp_path / "o" / "config.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_tokenizer_mismatch_is_refused_with_guided_generates_message(trio, tmp_path, capsys):
    other = tmp_path / "other_reward"
    tokenizer = tiny_tokenizer()
    swapped = json.loads(tokenizer.backend_tokenizer.to_str())
    model_vocab = swapped["model"]["vocab"]  # token -> id: give two tokens each other's id
    by_id = {index: token for token, index in model_vocab.items()}
    a, b = by_id[100], by_id[101]
    model_vocab[a], model_vocab[b] = model_vocab[b], model_vocab[a]
    tiny_trio()["reward"].save_pretrained(other)
    tokenizer.save_pretrained(other)
    (other / "tokenizer.json").write_text(json.dumps(swapped))
    argv = ["export-vllm", "--base", str(trio["base"]), "--reward", str(other), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"the base and reward tokenizers differ at id 100: base has {a!r}, reward has {b!r}" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--alpha", "nan", "--alpha must be a finite number"),
    ("--alpha", "inf", "--alpha must be a finite number"),
])
def test_bad_alpha_is_refused(trio, tmp_path, capsys, flag, value, message):
    argv = ["export-vllm", "--base", str(trio["base"]), "--reward", str(trio["reward"]), "--out",
            str(tmp_path / "o"), flag, value]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", [float("nan"), "0.5", True, None, [0.5]])
def test_check_alpha_names_what_is_allowed(value):
    with pytest.raises(ValueError, match=r"tita_alpha must be a finite number \(0: the base model alone"):
        check_alpha(value)


def test_bad_folders_are_refused(trio, tmp_path, capsys):
    llava = tmp_path / "llava"
    llava.mkdir()
    (llava / "config.json").write_text(json.dumps({"architectures": ["LlavaForConditionalGeneration"],
                                                    "vision_config": {}, "vocab_size": 512}))
    cases = {
        str(tmp_path / "missing"): "does not exist",
        str(llava): "export-vllm combines causal language models",
        str(tmp_path): "has no config.json",
    }
    for folder, message in cases.items():
        assert main(["export-vllm", "--base", str(trio["base"]), "--reward", folder, "--out",
                     str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err, folder
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((trio["reward"] / "config.json").read_text())
    assert main(["export-vllm", "--base", str(trio["base"]), "--reward", str(no_weights), "--out",
                 str(tmp_path / "o")]) == 2
    assert "has no safetensors weights" in capsys.readouterr().err
    exported = export_vllm(trio["base"], trio["reward"], tmp_path / "exported")
    assert main(["export-vllm", "--base", str(exported), "--reward", str(trio["reward"]), "--out",
                 str(tmp_path / "o")]) == 2
    assert "is already a TITA export" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_spec_reading_explains_a_folder_that_is_not_an_export(trio):
    plain = json.loads((trio["base"] / "config.json").read_text())
    with pytest.raises(ValueError, match="is not a TITA export: export the models with `tita-ext export-vllm"):
        TitaSpec.from_config(plain)
    broken = dict(plain, tita={"format": 1, "alpha": 0.6, "vocab_limit": 300, "towers": {"base": {}}})
    with pytest.raises(ValueError, match="must hold the configs of base, reward and optionally ref"):
        TitaSpec.from_config(broken)

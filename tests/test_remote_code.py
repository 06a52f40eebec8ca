"""A saved model loads with trust_remote_code=True in a Python where vaswani_hf cannot be imported."""

import ast
import json
import os
import subprocess
import sys
import textwrap

import torch
from helpers import HANG_GUARD_SECONDS, ROOT, padded_batch, tiny_model

from vaswani_hf import VaswaniForConditionalGeneration
from vaswani_hf.hub import CODE_FILES


def run_without_package(code: str, tmp_path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where `import vaswani_hf` fails, with an empty HF cache and no network."""
    blocker = "import sys; sys.modules['vaswani_hf'] = None\n"  # makes any import of vaswani_hf raise ImportError
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    return subprocess.run(
        [sys.executable, "-c", blocker + textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )


def test_saved_folder_loads_with_trust_remote_code_without_the_package(tmp_path):
    model = tiny_model(seed=21)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    assert {"configuration_vaswani.py", "modeling_vaswani.py"} <= {p.name for p in folder.iterdir()}
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSeq2SeqLM"] == "modeling_vaswani.VaswaniForConditionalGeneration"

    batch = padded_batch()
    torch.save(batch, tmp_path / "batch.pt")
    expected = model.generate(**batch, num_beams=2, max_new_tokens=6)
    result = run_without_package(
        f"""
        import torch
        from transformers import AutoModelForSeq2SeqLM
        try:
            import vaswani_hf
            raise SystemExit("vaswani_hf should not be importable here")
        except ImportError:
            pass
        model = AutoModelForSeq2SeqLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        batch = torch.load("batch.pt", weights_only=True)
        torch.save(model.generate(**batch, num_beams=2, max_new_tokens=6), "generated.pt")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "generated.pt", weights_only=True), expected)


def test_installed_package_needs_no_trust_remote_code(tmp_path):
    tiny_model(seed=22).save_pretrained(tmp_path)
    from transformers import AutoModelForSeq2SeqLM

    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert type(loaded) is VaswaniForConditionalGeneration  # the package's class, not a dynamic module


def test_remote_code_refuses_missing_weights_and_decodes_as_the_paper_without_a_generation_config(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_model(seed=23)
    damaged, bare = tmp_path / "damaged", tmp_path / "bare"
    for folder in (damaged, bare):
        model.save_pretrained(folder)
    weights = load_file(damaged / "model.safetensors")
    del weights["model.decoder.layers.0.ffn.fc1.bias"]
    save_file(weights, damaged / "model.safetensors", metadata={"format": "pt"})
    (bare / "generation_config.json").unlink()
    result = run_without_package(
        f"""
        from transformers import AutoModelForSeq2SeqLM
        try:
            AutoModelForSeq2SeqLM.from_pretrained({str(damaged)!r}, trust_remote_code=True)
            raise SystemExit("loaded with a tensor missing")
        except ValueError as error:
            assert "model.decoder.layers.0.ffn.fc1.bias" in str(error), error
        model = AutoModelForSeq2SeqLM.from_pretrained({str(bare)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        config = model.generation_config
        print((config.num_beams, config.length_penalty, config.max_new_tokens_offset))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "(4, 0.6, 50)"
    assert f"{bare} has no generation_config.json" in result.stderr


def test_the_remote_code_files_import_only_each_other_torch_and_transformers(tmp_path):
    allowed = {"torch", "transformers", "safetensors"} | set(sys.stdlib_module_names)  # safetensors: transformers'
    for name in CODE_FILES:
        tree = ast.parse((ROOT / "vaswani_hf" / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and f"{node.module}.py" in CODE_FILES, f"{name} imports .{node.module}"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
                assert {module.split(".")[0] for module in modules} <= allowed, f"{name} imports {modules}"
    # save_pretrained copies the model's file and the siblings it imports, which CODE_FILES must all name
    tiny_model(seed=24).save_pretrained(tmp_path)
    saved = {path.name for path in tmp_path.glob("*.py")}
    assert saved == {"configuration_vaswani.py", "generation_vaswani.py", "loss_vaswani.py", "modeling_vaswani.py"}
    assert saved <= set(CODE_FILES)

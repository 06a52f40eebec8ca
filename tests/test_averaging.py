"""vaswani-average (Sec. 6.1) on bad arguments: a count below one, an input as the output, checkpoints of different
models, a single checkpoint. Each refusal leaves the checkpoints as they were."""

import hashlib
import json

import pytest
import torch
from helpers import tiny_model
from safetensors.torch import load_file

from vaswani_hf.checkpoints import COMPLETE_MARKER, checkpoint_record
from vaswani_hf.cli.average import main


def checkpoint(folder, seed: int = 0, **overrides):
    """A complete checkpoint folder as the Trainer leaves it: the model's files and the completion marker."""
    tiny_model(seed=seed, **overrides).save_pretrained(folder)
    record = {"global_step": int(folder.name.rsplit("-", 1)[1]), **checkpoint_record(folder)}
    (folder / COMPLETE_MARKER).write_text(json.dumps(record))
    return folder


@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "run"
    for step in (10, 20, 30):
        checkpoint(folder / f"checkpoint-{step}", seed=step)
    return folder


def digests(folder) -> dict[str, str]:
    files = [path for path in folder.rglob("*") if path.is_file()]
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code != 0
    return f"{exit.value.code} {capsys.readouterr().err}"


@pytest.mark.parametrize(
    "last, named",
    [("0", "must be at least 1 (how many"), ("-1", "must be at least 1 (how many"), ("two", "a whole number")],
)
def test_last_must_be_a_count_of_at_least_one(run, tmp_path, capsys, last, named):
    message = refused(["--run_dir", str(run), "--last", last, "--output_dir", str(tmp_path / "out")], capsys)
    assert "argument --last" in message and named in message
    assert f"got {last}" in message or f"got {last!r}" in message
    assert not (tmp_path / "out").exists()


def test_an_input_is_never_the_output_nor_holds_it_nor_holds_the_output(run, capsys):
    before = digests(run)
    for step in (10, 20, 30):  # the three checkpoints' weights and markers, compared after each refusal
        assert {f"checkpoint-{step}/model.safetensors", f"checkpoint-{step}/{COMPLETE_MARKER}"} <= before.keys()
    newest = run / "checkpoint-30"
    cases = [(newest, "is the checkpoint"), (newest / "avg", "is inside the checkpoint"), (run, "holds the checkpoint")]
    for output, named in cases:
        for overwrite in ([], ["--overwrite"]):
            message = refused(["--run_dir", str(run), "--last", "2", "--output_dir", str(output), *overwrite], capsys)
            assert named in message and str(output) in message
    assert digests(run) == before  # weights and completion markers as they were


def test_the_output_is_a_new_model_folder_without_a_completion_marker(run, tmp_path, capsys):
    output = tmp_path / "averaged"
    main(["--run_dir", str(run), "--last", "2", "--output_dir", str(output)])
    assert "averaged 2 checkpoints" in capsys.readouterr().out
    assert (output / "model.safetensors").is_file() and not (output / COMPLETE_MARKER).exists()
    averaged = load_file(output / "model.safetensors")
    newest = [load_file(run / f"checkpoint-{step}" / "model.safetensors") for step in (20, 30)]
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, (newest[0][name] + newest[1][name]) / 2)
    # a second run into it is refused unless asked; --overwrite rebuilds it
    assert "exists and is not empty" in refused(["--run_dir", str(run), "--output_dir", str(output)], capsys)
    main(["--run_dir", str(run), "--output_dir", str(output), "--overwrite"])
    err = capsys.readouterr().err
    assert "has 3 complete checkpoints, not 5: averaging those" in err


def test_checkpoints_of_different_models_are_refused_naming_the_fields(tmp_path, capsys):
    ours = checkpoint(tmp_path / "checkpoint-10", seed=0)
    other = checkpoint(tmp_path / "checkpoint-20", seed=1, dropout=0.3, scale_attention=False)  # the same shapes
    message = refused(["--checkpoints", str(ours), str(other), "--output_dir", str(tmp_path / "out")], capsys)
    assert "different models" in message
    assert f"scale_attention (True in {ours}, False in {other})" in message
    assert "dropout" not in message  # P_drop is how a checkpoint was trained (a schedule changes it), not its model
    assert not (tmp_path / "out").exists()
    # what only records how a checkpoint was saved or trained does not count
    same = checkpoint(tmp_path / "checkpoint-30", seed=2, dropout=0.3)
    saved = json.loads((same / "config.json").read_text())
    saved.update(transformers_version="0.0.1", _name_or_path="elsewhere")
    (same / "config.json").write_text(json.dumps(saved))
    main(["--checkpoints", str(ours), str(same), "--output_dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_one_checkpoint_is_averaged_and_said(run, tmp_path, capsys):
    output = tmp_path / "one"
    main(["--checkpoints", str(run / "checkpoint-30"), "--output_dir", str(output)])
    assert "one checkpoint only" in capsys.readouterr().err
    single, saved = load_file(run / "checkpoint-30" / "model.safetensors"), load_file(output / "model.safetensors")
    assert all(torch.equal(single[name], saved[name]) for name in single)
    message = refused(["--checkpoints", str(run / "checkpoint-30"), "--last", "1", "--output_dir", str(output)], capsys)
    assert "--last applies to --run_dir" in message

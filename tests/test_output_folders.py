"""Nothing is deleted that a command did not build: the one rule for folders built whole and renamed into place
(`vaswani_hf.evaluation.check_output_folder`, applied by `atomic_folder`), which publishing, the CTranslate2 export
and checkpoint averaging use. Publishing's and averaging's own cases are in tests/test_hub.py and
tests/test_averaging.py."""

import pytest
from transformers import AutoModelForSeq2SeqLM

from vaswani_hf import export_ctranslate2
from vaswani_hf.evaluation import atomic_folder


def build(path, **policy) -> None:
    with atomic_folder(path, **policy) as staging:
        (staging / "built.txt").write_text("new")


def user_folder(path):
    path.mkdir(parents=True)
    (path / "mine.txt").write_text("keep me")
    return path


def test_a_non_empty_folder_is_refused_and_kept_unless_overwrite_is_asked(tmp_path):
    mine = user_folder(tmp_path / "mine")
    with pytest.raises(FileExistsError, match=r"mine exists and is not empty \(mine.txt\).*--overwrite"):
        build(mine)
    assert (mine / "mine.txt").read_text() == "keep me" and not (mine / "built.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no staging folder left behind
    build(mine, overwrite=True)
    assert [p.name for p in mine.iterdir()] == ["built.txt"]
    (tmp_path / "empty").mkdir()
    build(tmp_path / "empty")  # an empty folder, like a new one, needs no flag
    assert (tmp_path / "empty" / "built.txt").is_file()
    (tmp_path / "file").write_text("a file")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        build(tmp_path / "file", overwrite=True)


def test_the_current_directory_and_folders_holding_it_are_never_targets(tmp_path, monkeypatch):
    work = user_folder(tmp_path / "parent" / "work")
    monkeypatch.chdir(work)
    for target, where in ((".", "is"), (str(work), "is"), ("..", "holds"), (str(tmp_path), "holds")):
        with pytest.raises(FileExistsError, match=f"{where} the current directory"):
            build(target, overwrite=True)
    assert [p.name for p in work.iterdir()] == ["mine.txt"] and (work / "mine.txt").read_text() == "keep me"


def test_kept_folders_and_folders_holding_them_are_never_targets_even_with_overwrite(tmp_path):
    run = user_folder(tmp_path / "runs" / "run")
    keep = [("the training run", run)]
    for target, where in ((run, "is"), (tmp_path / "runs", "holds"), (tmp_path, "holds")):
        with pytest.raises(FileExistsError, match=f"{where} the training run .*replacing it would delete"):
            build(target, overwrite=True, keep=keep)
    assert (run / "mine.txt").read_text() == "keep me"
    build(run / "hub" / "repo", keep=keep)  # inside the kept folder is allowed, unless it is to stay untouched
    with pytest.raises(FileExistsError, match="is inside the checkpoint"):
        build(run / "sub", untouched=[("the checkpoint", run)])


def test_a_folder_the_same_command_built_is_rebuilt_unless_it_holds_something_else(tmp_path):
    folder = tmp_path / "repo"
    build(folder, built_by="vaswani-publish")
    build(folder, built_by="vaswani-publish")  # its own earlier build: no flag needed
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        build(folder, built_by="vaswani-other")  # another command did not build it
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"was built by vaswani-publish but now also holds \['notes.txt'\]"):
        build(folder, built_by="vaswani-publish")
    assert (folder / "notes.txt").read_text() == "mine"
    build(folder, overwrite=True)  # without built_by the record goes: the next build is not "its own" any more
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        build(folder, built_by="vaswani-publish")


def test_export_ctranslate2_never_replaces_a_folder_unasked_nor_the_model_it_came_from(
    tiny_translator, tiny_translator_folder, tmp_path
):
    model, tokenizer = tiny_translator
    mine = user_folder(tmp_path / "mine")
    with pytest.raises(FileExistsError, match="mine exists and is not empty"):
        export_ctranslate2(model, tokenizer, mine)
    assert [p.name for p in mine.iterdir()] == ["mine.txt"]
    export_ctranslate2(model, tokenizer, mine, overwrite=True)
    assert (mine / "model.bin").is_file() and not (mine / "mine.txt").exists()
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tiny_translator_folder)
    for target in (tiny_translator_folder, tiny_translator_folder.parent):
        with pytest.raises(FileExistsError, match="the model .*replacing it would delete the model"):
            export_ctranslate2(loaded, tokenizer, target, overwrite=True)
    assert (tiny_translator_folder / "model.safetensors").is_file()

"""The translating commands as a user runs them: vaswani-translate in a shell pipe, on files and arguments, and
vaswani-evaluate with its decoding options, on a tiny model saved to a folder."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import pipeline

import vaswani_hf  # noqa: F401  (registers the translation pipeline)
from vaswani_hf.cli import evaluate, translate
from vaswani_hf.evaluation import bleu
from vaswani_hf.evaluation import translate as translate_batches
from vaswani_hf.files import as_one_line, split_text_lines

SOURCES = [
    "A man in a red shirt is riding a bike.",
    "",
    "Two dogs are playing in the snow.",
    "   ",
    "A woman sings\u2028on a stage.",  # a line separator inside a line: still one source, one output line
    "Children play football in the park.",
    "A group of people stand outside a building.",
]
# The bytes a user's file holds: one CRLF line ending among the LF ones, a final newline.
SOURCE_BYTES = "\n".join(SOURCES).replace("snow.\n", "snow.\r\n").encode("utf-8") + b"\n"


def expected_translations(folder: Path, sources: list[str], **generate_kwargs) -> list[str]:
    """What pipeline("translation") gives for each source on its own (no batching), line breaks made spaces."""
    translator = pipeline("translation", model=str(folder))
    return [as_one_line(translator(source, **generate_kwargs)[0]["translation_text"]) for source in sources]


def command(name: str) -> str:
    return str(Path(sys.executable).parent / name)  # the console command installed beside this interpreter


def test_translate_in_a_pipe_writes_one_translation_per_line_and_nothing_else(tiny_translator_folder, tmp_path):
    """`cat src | vaswani-translate MODEL > hyp`: line N of stdout is the translation of line N, empty for an empty
    or blank source; the loading messages and the progress bar go to stderr."""
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [command("vaswani-translate"), str(tiny_translator_folder), "--batch_size", "2", "--device", "cpu"],
        input=SOURCE_BYTES,
        capture_output=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    expected = expected_translations(tiny_translator_folder, SOURCES)
    assert expected[1] == expected[3] == "" and all(expected[i] for i in (0, 2, 4, 5, 6))
    assert result.stdout.decode("utf-8") == "".join(line + "\n" for line in expected)
    assert result.stdout.count(b"\n") == SOURCE_BYTES.count(b"\n") == len(SOURCES)  # what `wc -l` counts
    assert len(result.stdout.decode().splitlines()) == len(SOURCES)  # and Python's reading of lines
    assert b"translating" in result.stderr


def test_translate_reads_input_writes_output_atomically_and_passes_decoding_options(
    tiny_translator_folder, tmp_path, capsys
):
    source_file, output_file = tmp_path / "src.en", tmp_path / "hyp.txt"
    source_file.write_bytes(SOURCE_BYTES)
    greedy = expected_translations(tiny_translator_folder, SOURCES, num_beams=1, length_penalty=1.0)
    beam = expected_translations(tiny_translator_folder, SOURCES)
    assert greedy != beam  # so the test sees whether --num_beams reached generate()

    argv = [str(tiny_translator_folder), "--input", str(source_file), "--output", str(output_file)]
    translate.main([*argv, "--num_beams", "1", "--length_penalty", "1.0", "--batch_size", "3"])
    assert capsys.readouterr().out == ""
    assert output_file.read_text(encoding="utf-8").split("\n") == [*greedy, ""]
    (tmp_path / "plain").write_text("")  # the output has a new file's usual permissions, as `> hyp.txt` gives
    assert output_file.stat().st_mode == (tmp_path / "plain").stat().st_mode
    (tmp_path / "plain").unlink()

    # A source too long for the model fails the run with its line named, and the old output stays as it was.
    long_source = "A man rides a bike. " * 400
    source_file.write_text(f"A dog runs.\n{long_source}\nTwo cats.\n", encoding="utf-8")
    with pytest.raises(SystemExit) as failed:
        translate.main(argv)
    assert failed.value.code == 1
    error = capsys.readouterr().err
    assert "source line 2:" in error and "more than the 1024 this model accepts" in error
    assert output_file.read_text(encoding="utf-8").split("\n") == [*greedy, ""]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hyp.txt", "src.en"]

    # Sentences given as arguments, before or after the options, to stdout.
    translate.main([str(tiny_translator_folder), SOURCES[0], "--num_beams", "1", SOURCES[2], "--length_penalty", "1"])
    assert capsys.readouterr().out == f"{greedy[0]}\n{greedy[2]}\n"


def test_translate_names_bad_input_and_devices(tiny_translator_folder, tmp_path, capsys):
    source_file = tmp_path / "src.en"
    source_file.write_bytes(b"A dog runs.\nA cat \xff sleeps.\n")
    with pytest.raises(SystemExit) as failed:
        translate.main([str(tiny_translator_folder), "--input", str(source_file)])
    assert failed.value.code == 1 and f"{source_file} is not valid UTF-8 (line 2)" in capsys.readouterr().err

    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last CUDA device, on any machine
    for device, message in (
        ("gpu", "unknown device 'gpu'; choices: auto, cpu, cuda, cuda:N"),
        (missing, f"device '{missing}' is not available: this machine has "),
    ):
        for main in (translate.main, evaluate.main):
            paths = [str(source_file)] * (2 if main is evaluate.main else 0)
            with pytest.raises(SystemExit) as refused:
                main([str(tiny_translator_folder), *paths, "--device", device])
            assert refused.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        translate.main([str(tiny_translator_folder), "A dog.", "--input", str(source_file)])
    assert "not both" in capsys.readouterr().err
    (tmp_path / "clean.en").write_text("A dog runs.\n", encoding="utf-8")
    clean = str(tmp_path / "clean.en")
    unwritable = tmp_path / "clean.en" / "out.txt"  # an output it cannot write (in a file): named, no traceback
    for main, argv in (
        (translate.main, ["A dog.", "--output", str(unwritable)]),
        (evaluate.main, [clean, clean, "--metrics_file", str(unwritable)]),
    ):
        with pytest.raises(SystemExit) as refused:
            main([str(tiny_translator_folder), *argv, "--device", "cpu"])
        assert refused.value.code == 1 and str(unwritable.parent) in capsys.readouterr().err
    for dtype, message in (("float16", "--dtype float16 decodes on GPUs only"), ("fp16", "invalid choice: 'fp16'")):
        for main in (translate.main, evaluate.main):
            paths = [str(source_file)] * (2 if main is evaluate.main else 0)
            with pytest.raises(SystemExit) as refused:
                main([str(tiny_translator_folder), *paths, "--device", "cpu", "--dtype", dtype])
            assert refused.value.code == 2 and message in capsys.readouterr().err


def test_both_commands_and_both_apis_give_empty_translations_for_blank_sources_and_empty_inputs(
    tiny_translator, tiny_translator_folder, tmp_path, capsys
):
    model, tokenizer = tiny_translator
    expected = expected_translations(tiny_translator_folder, SOURCES, num_beams=1)
    one_line = [index for index, source in enumerate(SOURCES) if "\u2028" not in source]  # no separator to replace
    translated = translate_batches(model, tokenizer, SOURCES, batch_size=3, num_beams=1)
    assert [translated[i] for i in one_line] == [expected[i] for i in one_line] and translated[1] == translated[3] == ""
    assert translate_batches(model, tokenizer, [], num_beams=1) == []
    translator = pipeline("translation", model=str(tiny_translator_folder))
    assert translator([]) == [] and translator.length_order([]) == []
    source_file, references = tmp_path / "src.en", tmp_path / "ref.de"
    source_file.write_bytes(SOURCE_BYTES)
    references.write_text("".join(f"line {n}\n" for n in range(len(SOURCES))), encoding="utf-8")
    output_file = tmp_path / "hyp.de"
    argv = [str(tiny_translator_folder), str(source_file), str(references), "--output_file", str(output_file)]
    evaluate.main([*argv, "--num_beams", "1", "--device", "cpu"])
    assert output_file.read_text(encoding="utf-8").split("\n") == [*expected, ""]  # the same as vaswani-translate
    empty = tmp_path / "empty.en"
    empty.write_bytes(b"")
    capsys.readouterr()
    translate.main([str(tiny_translator_folder), "--input", str(empty), "--output", str(tmp_path / "empty.de")])
    assert (tmp_path / "empty.de").read_bytes() == b""


def test_the_pipeline_returns_num_return_sequences_translations_for_blank_inputs_too(tiny_translator_folder):
    translator = pipeline("translation", model=str(tiny_translator_folder))
    results = translator(["A dog runs.", "", "A cat."], num_return_sequences=2)
    assert [len(result) for result in results] == [2, 2, 2] and results[1] == [{"translation_text": ""}] * 2
    assert translator("  ", num_return_sequences=3) == [{"translation_text": ""}] * 3
    assert translator(["", " "], num_return_sequences=2) == [[{"translation_text": ""}] * 2] * 2
    created = pipeline("translation", model=str(tiny_translator_folder), num_return_sequences=2)
    assert [len(result) for result in created(["", "A dog runs."])] == [2, 2]


def test_a_source_too_long_is_cut_with_truncation_and_a_byte_order_mark_is_no_text(
    tiny_translator_folder, tmp_path, capsys
):
    source_file = tmp_path / "src.en"
    source_file.write_bytes("\ufeffA dog runs.\n".encode() + ("A man rides a bike. " * 400).encode() + b"\n")
    translate.main([str(tiny_translator_folder), "--input", str(source_file), "--truncation", "--num_beams", "1"])
    first, second = capsys.readouterr().out.split("\n")[:2]
    assert first == expected_translations(tiny_translator_folder, ["A dog runs."], num_beams=1)[0] and second
    assert split_text_lines("\ufeffa\nb\n".encode(), "src") == ["a", "b"]


def test_both_commands_decode_in_bfloat16_when_asked(tiny_translator, tiny_translator_folder, tmp_path, capsys):
    model, tokenizer = tiny_translator
    sources = [source for source in SOURCES if source.strip()]
    source_file = tmp_path / "src.en"
    source_file.write_text("\n".join(sources) + "\n", encoding="utf-8")
    cast = copy.deepcopy(model).to(torch.bfloat16)
    expected = translate_batches(cast, tokenizer, sources, batch_size=1, num_beams=1)
    assert expected != translate_batches(model, tokenizer, sources, batch_size=1, num_beams=1)  # bf16 tells

    options = ["--device", "cpu", "--dtype", "bfloat16", "--batch_size", "1", "--num_beams", "1"]
    output_file = tmp_path / "hyp.de"
    evaluate.main(
        [str(tiny_translator_folder), str(source_file), str(source_file), "--output_file", str(output_file)] + options
    )
    assert output_file.read_text(encoding="utf-8").split("\n") == [*expected, ""]
    capsys.readouterr()  # evaluate's BLEU line
    translate.main([str(tiny_translator_folder), "--input", str(source_file), *options])
    assert capsys.readouterr().out.split("\n")[:-1] == [as_one_line(line) for line in expected]


def test_evaluate_takes_batch_size_beams_length_penalty_and_device(
    tiny_translator, tiny_translator_folder, small_corpus, tmp_path, capsys
):
    model, tokenizer = tiny_translator
    sources = (small_corpus / "val.en").read_text(encoding="utf-8").splitlines()[:6]
    references = (small_corpus / "val.de").read_text(encoding="utf-8").splitlines()[:6]
    source_file, reference_file = tmp_path / "val.en", tmp_path / "val.de"
    source_file.write_text("\n".join(sources) + "\n", encoding="utf-8")
    reference_file.write_text("\n".join(references) + "\n", encoding="utf-8")
    greedy = translate_batches(model, tokenizer, sources, batch_size=1, num_beams=1, length_penalty=1.0)
    assert greedy != translate_batches(model, tokenizer, sources, batch_size=1)  # the options change the output

    output_file, metrics_file = tmp_path / "hyp.de", tmp_path / "bleu.json"
    evaluate.main(
        [str(tiny_translator_folder), str(source_file), str(reference_file), "--output_file", str(output_file)]
        + ["--metrics_file", str(metrics_file), "--batch_size", "4", "--num_beams", "1", "--length_penalty", "1.0"]
        + ["--device", "cpu"]
    )
    assert output_file.read_text(encoding="utf-8").split("\n") == [*greedy, ""]
    expected = bleu(greedy, references)
    assert json.loads(metrics_file.read_text()) == json.loads(json.dumps(expected))
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"bleu": round(expected["score"], 2), "signature": expected["signature"]}


def test_lines_are_split_at_newlines_only_and_written_one_per_item():
    """Reading splits where `wc -l` does (a CRLF ending is dropped, other separators stay inside the line);
    writing turns every kind of line break inside a translation into a space, so no reader sees an extra line."""
    assert split_text_lines(SOURCE_BYTES, "src") == SOURCES
    assert split_text_lines(b"a\r\n\nb", "src") == ["a", "", "b"]  # no final newline: the last line still counts
    assert split_text_lines(b"", "src") == []
    assert as_one_line("a\nb\r\nc\rd\x0be\x0cf\x1cg\x85h\u2028i\u2029j\n\nk") == "a b c d e f g h i j k"
    assert as_one_line(" tabs\tstay ") == " tabs\tstay "

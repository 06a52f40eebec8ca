"""The speed benchmark (benchmarks/harness.py) measures what it claims: same work for both models, same outputs,
sane figures."""

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import tiny_config
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bf16, harness, operator_profile, projection, training_ab
from benchmarks.cli import main
from benchmarks.harness import (
    PeakMemory,
    hold_until_sampled,
    side_by_side,
    training_benchmark,
    training_step_flops,
    translation_benchmark,
)
from benchmarks.translate import ENGINES, translate_benchmark
from vaswani_hf.devices import cpu_has_native_bfloat16
from vaswani_hf.loss_vaswani import LinearCrossEntropy
from vaswani_hf.modeling_vaswani import VaswaniForConditionalGeneration


def test_peak_memory_sees_a_temporary_allocation():
    with PeakMemory() as peak:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        samples = peak.samples
        # freed once the sampler thread has read the memory with the block in it, however late the thread runs on a
        # loaded machine (a count it keeps, not a time)
        hold_until_sampled()
        assert peak.samples > samples
        del block
    assert peak.increase >= 48 * 2**20


def test_side_by_side_alternates_and_reports_every_run():
    calls = []
    timings = side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4)
    # per name a warm-up and a memory run, then timed runs in alternating order
    assert calls == ["a", "a", "b", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(timings["a"]["seconds"]) == 4 and timings["b"]["median_seconds"] >= 0


def test_side_by_side_measures_memory_outside_the_timed_runs():
    def allocate():
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        hold_until_sampled()  # until the memory run's sampler has seen it; at once in the timed runs
        del block

    timings = side_by_side({"allocating": allocate, "idle": lambda: None}, repeats=2)
    assert timings["allocating"]["peak_bytes"] >= 48 * 2**20 > timings["idle"]["peak_bytes"]


def test_training_flops_formula_counts_the_output_layer_and_attention():
    config = tiny_config(vocab_size=1000)
    base = training_step_flops(config, batch_size=1, source_length=10, target_length=10)
    assert training_step_flops(config, 2, 10, 10) == 2 * base
    # one more vocabulary entry costs 3 passes x 2 FLOPs x d_model per target token
    bigger = training_step_flops(tiny_config(vocab_size=1001), 1, 10, 10)
    assert bigger - base == 3 * 2 * config.d_model * 10


def test_training_flops_formula_equals_the_products_the_model_computes():
    # sides of different depths and feed-forward widths; eager attention, whose products the counter sees
    config = tiny_config(vocab_size=300, encoder_layers=2, decoder_layers=3, encoder_ffn_dim=128, decoder_ffn_dim=256)
    model = VaswaniForConditionalGeneration(config)
    model.set_attn_implementation("eager")
    batch = harness._random_batch(config, 2, 20, 12)
    inputs = {name: batch[name] for name in ("input_ids", "attention_mask", "decoder_input_ids")}
    with FlopCounterMode(display=False) as counter:  # the plain projection: the fused loss's addmm_ goes uncounted
        model(**inputs).logits.sum().backward()
    assert counter.get_total_flops() == training_step_flops(config, 2, 20, 12)


def test_training_benchmark_compares_the_same_step():
    results = training_benchmark(tiny_config(vocab_size=300), batch_size=4, source_length=8, target_length=8, repeats=2)
    for name in ("ours", "marian"):
        assert results[name]["target_tokens_per_second"] > 0
        # a share of the peak, rounded to 4 places: a tiny model on a busy machine may round to 0
        assert 0 <= results[name]["model_flops_utilisation"] < 1
    assert results["ratio_ours_to_marian"] > 0 and results["matmul_peak_gflops"] > 0 and results["step_flops"] > 0


def test_translation_benchmark_gives_marians_tokens_with_exact_lengths():
    torch.manual_seed(0)
    model = VaswaniForConditionalGeneration(tiny_config(vocab_size=300)).eval()
    results = translation_benchmark(model, num_beams=2, batch_size=3, source_length=6, new_tokens=4, repeats=2)
    assert results["same_tokens_as_marian"] is True
    assert set(results) >= {"ours", "marian", "ours_int8_dynamic"}


def test_without_bf16_units_the_benchmarks_say_so_and_skip_the_bf16_rows(monkeypatch):
    monkeypatch.setattr(harness, "cpu_has_native_bfloat16", lambda: False)
    measured = []
    monkeypatch.setattr(bf16, "training_bf16_benchmark", lambda *args, **kwargs: measured.append(args))
    results = bf16.bf16_benchmark(presets=("small",))
    assert results["machine"]["native_bfloat16"] is False and "no bfloat16 units" in results["skipped"]["reason"]
    assert set(results) == {"machine", "skipped"} and measured == []
    # the speed benchmark keeps its float32 rows and names the skipped ones
    monkeypatch.setattr(harness, "training_benchmark", lambda config, **kwargs: {"dtype": str(kwargs)})
    monkeypatch.setattr(harness, "translation_benchmark", lambda *args, **kwargs: {})
    monkeypatch.setattr(harness, "_same_weights_pair", lambda config: (None, None))
    speed = harness.speed_benchmark(repeats=1)
    assert not [section for section in speed if "bfloat16" in section]
    assert "training_base_float32" in speed and "skipped" in speed["machine"]["bfloat16_rows"]
    # with the units (this CPU's flags monkeypatched), the bf16 training rows are there
    monkeypatch.setattr(harness, "cpu_has_native_bfloat16", lambda: True)
    assert {"training_small_bfloat16", "training_base_bfloat16"} <= set(harness.speed_benchmark(repeats=1))


def test_the_bf16_training_benchmark_runs_ours_fused_unfused_and_marian():
    results = bf16.training_bf16_benchmark(
        tiny_config(vocab_size=300), batch_size=4, source_length=8, target_length=8, repeats=1
    )
    for name in ("ours", "ours_unfused_loss", "marian"):
        assert results[name]["target_tokens_per_second"] > 0
    assert results["matmul_peak_gflops"] > 0 and results["ratio_ours_to_marian"] > 0


def test_the_bf16_curves_compare_the_runs_up_to_the_updates_both_reached(tmp_path):
    def run(name: str, steps: int, in_checkpoint: bool) -> Path:
        folder = tmp_path / name
        state = folder / "checkpoint-30" if in_checkpoint else folder
        state.mkdir(parents=True)
        history = [{"step": step, "loss": 10.0 - step / 10} for step in range(10, steps + 1, 10)]
        history += [{"step": step, "eval_bleu": step / 2} for step in range(20, steps + 1, 20)] + [{"step": steps}]
        (state / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        if not in_checkpoint:  # a finished run: its final model's test BLEU
            evaluation = {"average of the best 5": {"test_bleu": {"score": 38.123}}}
            metrics = {"final_model": "average of the best 5", "evaluation": evaluation}
            (folder / "metrics.json").write_text(json.dumps(metrics))
        return folder

    runs = {"float32": run("fp32", 50, in_checkpoint=False), "bfloat16": run("bf16", 30, in_checkpoint=True)}
    results = bf16.training_curves(runs, tmp_path / "curves.png")
    assert results["updates_compared"] == 30 and list(results["loss_float32"]) == ["10", "20", "30"]
    assert results["final_loss_bfloat16"] == results["final_loss_float32"] == 7.0
    assert results["validation_bleu_float32"] == results["validation_bleu_bfloat16"] == {"20": 10.0}
    assert results["test_bleu_float32"] == {"model": "average of the best 5", "after_updates": 50, "bleu": 38.12}
    assert "test_bleu_bfloat16" not in results  # stopped before its final evaluation
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_the_translate_benchmark_runs_every_engine_on_the_same_sentences(tiny_translator, multi30k_dir, tmp_path):
    model, tokenizer = tiny_translator
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    results = translate_benchmark(tmp_path / "model", multi30k_dir, batch_size=3, repeats=2, sentences=7)
    rows = results["translate"]
    expected = {*ENGINES, "ours_pipeline_before", "ours_evaluate_before"}
    if not cpu_has_native_bfloat16():  # ours in bfloat16 runs only where the CPU has bf16 units, and says so
        expected.remove("ours_evaluate_bfloat16")
        assert "no bfloat16 units" in results["skipped"]["ours_evaluate_bfloat16"]
    assert set(rows) == expected
    for row in rows.values():
        assert len(row["all_seconds"]) == 2 and row["seconds"] > 0 and row["sentences_per_second"] > 0
        assert 0 <= row["bleu"] <= 100 and row["speed_relative_to_ctranslate2_float32"] > 0
    # ours through both paths, before and after the batching changes, and Marian with the same weights agree
    for name in (
        "ours_pipeline",
        "ours_evaluate_history_copies",
        "ours_pipeline_before",
        "ours_evaluate_before",
        "marian",
    ):
        assert rows[name]["same_translations_as_ours_evaluate"] == 7, name
    assert rows["ctranslate2_float32"]["speed_relative_to_ctranslate2_float32"] == 1.0
    # none in this process; each CTranslate2 engine apart from the others (a translator slows PyTorch beside it)
    process_ids = results["settings"]["process_ids"]
    assert set(process_ids) == set(rows) and os.getpid() not in process_ids.values()
    ctranslate2_ids = [process_ids.pop("ctranslate2_float32"), process_ids.pop("ctranslate2_int8")]
    assert len({*ctranslate2_ids, *process_ids.values()}) == 3
    machine = results["machine"]
    assert machine["threads"] == torch.get_num_threads() and isinstance(machine["native_bfloat16"], bool)
    assert machine["cpu"] is not None and machine["transformers"] and results["settings"]["sentences"] == 7


def test_an_engine_that_fails_in_its_process_is_named_with_its_error(multi30k_dir, tmp_path):
    with pytest.raises(RuntimeError, match="the pytorch process failed(.|\\n)*no-model"):
        translate_benchmark(tmp_path / "no-model", multi30k_dir, sentences=2, engines=("ours_evaluate",), before=False)


def test_the_translate_subcommand_writes_its_tables(tiny_translator, multi30k_dir, tmp_path):
    model, tokenizer = tiny_translator
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    arguments = ["translate", "--trained_model", str(tmp_path / "model"), "--corpus", str(multi30k_dir)]
    arguments += ["--sentences", "4", "--batch_size", "2", "--repeats", "1"]
    arguments += ["--engines", "ours_evaluate,ctranslate2_float32", "--no_before", "--one_process"]
    main([*arguments, "--output_dir", str(tmp_path / "out")])
    written = json.loads((tmp_path / "out" / "translate.json").read_text())
    assert set(written["translate"]) == {"ours_evaluate", "ctranslate2_float32"}
    process_ids = written["settings"]["process_ids"]  # --one_process: CTranslate2 beside ours, as users may run it
    assert process_ids["ours_evaluate"] == process_ids["ctranslate2_float32"] != os.getpid()
    assert "| ours_evaluate |" in (tmp_path / "out" / "translate.md").read_text()
    with pytest.raises(SystemExit):
        main(["translate", "--trained_model", str(tmp_path / "model"), "--engines", "ours,fast"])


def test_the_projection_benchmark_times_both_layouts_by_rows_and_translates_with_each_rule(
    tiny_translator_folder, multi30k_dir, tmp_path
):
    arguments = ["projection", "--trained_model", str(tiny_translator_folder), "--corpus", str(multi30k_dir)]
    arguments += ["--rows", "2,32,128", "--sentences", "5", "--batch_size", "3", "--repeats", "1"]
    main([*arguments, "--output_dir", str(tmp_path)])
    written = json.loads((tmp_path / "projection.json").read_text())
    vocabulary, width = VaswaniForConditionalGeneration.from_pretrained(tiny_translator_folder).lm_head.weight.shape
    for section in ("products_base_preset_37000x512", f"products_trained_model_{vocabulary}x{width}"):
        rows = written[section]
        assert list(rows) == ["2 rows", "32 rows", "128 rows"]
        assert rows["2 rows"]["rule_takes"] == "plain" and rows["32 rows"]["rule_takes"] == "transposed"
        assert rows["128 rows"]["rule_takes"] == "plain"
        assert all(row["microseconds_plain"] > 0 < row["microseconds_transposed_with_copy"] for row in rows.values())
    translated = written["translate"]
    assert set(translated) == set(projection.LAYOUTS)
    for row in translated.values():  # the layouts change the sums' rounding only: the same translations here
        assert row["sentences"] == 5 and row["same_translations_as_rule"] == 5 and row["seconds"] > 0
    assert translated["always_transposed"]["speed_relative_to_always_transposed"] == 1.0
    assert written["machine"]["threads"] == torch.get_num_threads()
    assert "| 32 rows |" in (tmp_path / "projection.md").read_text()
    with pytest.raises(SystemExit):
        main(["projection", "--rows", "32,x"])


def test_the_profiles_give_operator_shares_and_the_training_steps_utilisation():
    config = tiny_config()
    float32 = operator_profile.training_step_profile(config, batch_size=4, length=6, repeats=1)
    bfloat16 = operator_profile.training_step_profile(
        config, batch_size=4, length=6, repeats=1, autocast_dtype=torch.bfloat16
    )
    beam = operator_profile.beam_search_profile(config, batch_size=2, length=5, repeats=1)
    for measured in (float32, bfloat16, beam):
        products = measured.pop("share of matrix products")
        shares = {key: value for key, value in measured.items() if key.startswith("share of ")}
        assert 0 < len(shares) <= 12 and all(0 <= share <= 1 for share in shares.values())  # rounded to 4 places
        assert list(shares.values()) == sorted(shares.values(), reverse=True) and sum(shares.values()) <= 1.0001
        # the products listed among the costliest operators are all counted in the products' share
        listed = sum(shares.get(f"share of {name}", 0) for name in operator_profile.MATRIX_PRODUCTS)
        assert 0 < products <= 1 and listed <= products + 0.0005
    for training in (float32, bfloat16):
        assert training["step_seconds"] > 0 and training["matmul_peak_gflops"] > 0
        assert 0 <= training["model_flops_utilisation"] <= 1  # rounded to 3 places: a tiny step's can round to 0
    assert beam["seconds"] > 0


@pytest.mark.parametrize("native_bfloat16", [True, False])
def test_the_profile_has_a_bfloat16_step_only_on_a_cpu_with_bfloat16_units(monkeypatch, native_bfloat16):
    profiled = []
    monkeypatch.setattr(operator_profile, "cpu_has_native_bfloat16", lambda: native_bfloat16)
    monkeypatch.setattr(
        operator_profile,
        "training_step_profile",
        lambda config, repeats, autocast_dtype=None: profiled.append(autocast_dtype) or {},
    )
    monkeypatch.setattr(operator_profile, "beam_search_profile", lambda config, repeats: {})
    results = operator_profile.profile_benchmark("small", vocab_size=300, repeats=1)
    if native_bfloat16:
        assert profiled == [None, torch.bfloat16] and "bfloat16_rows" not in results["machine"]
        assert list(results)[1:] == [
            "training_step_small_float32",
            "training_step_small_bfloat16",
            "beam4_small_float32",
        ]
    else:
        assert profiled == [None] and results["machine"]["bfloat16_rows"].startswith("skipped: no bfloat16 units")
        assert list(results)[1:] == ["training_step_small_float32", "beam4_small_float32"]


def test_the_training_ab_times_each_change_against_its_before_in_one_process():
    results = training_ab.training_ab_benchmark(
        "small", vocab_size=300, batch_size=4, length=6, repeats=1, before="HEAD"
    )
    labels = ["float32"] + (["bfloat16"] if cpu_has_native_bfloat16() else [])
    has_history = training_ab.loss_at_commit("HEAD") is not None  # a git checkout (CI's clone is one)
    for label in labels:
        sections = [f"dropout_alone_{label}", f"dropout_in_step_small_{label}", f"attention_alone_{label}"]
        sections += [f"attention_in_step_small_{label}"] if label == "bfloat16" else []
        sections += [f"loss_alone_{label}", f"loss_in_step_small_{label}"] if has_history else []
        for section in sections:
            rows = results[section]
            assert rows["speedup"] > 0 and all(
                row["median_seconds"] > 0 for row in rows.values() if isinstance(row, dict)
            )
    assert results["machine"]["threads"] == torch.get_num_threads()


def test_the_loss_before_a_change_is_read_from_the_repositorys_history():
    before = training_ab.loss_at_commit("HEAD")
    if before is None:
        pytest.skip("not a git checkout")
    generator = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(5, 8, generator=generator), torch.randn(30, 8, generator=generator)
    labels = torch.tensor([1, -100, 29, 0, 7])
    torch.testing.assert_close(
        before.apply(hidden, weight, labels, 0.1, 4, 2), LinearCrossEntropy.apply(hidden, weight, labels, 0.1, 4, 2)
    )
    assert training_ab.loss_at_commit("no-such-commit") is None

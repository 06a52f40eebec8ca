"""VaswaniTrainer and the paper's recipe: token batches, Eq. 3, Adam, complete checkpoints, averaging."""

from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_model
from datasets import Dataset
from safetensors.torch import load_file
from transformers import (
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerControl,
    TrainerState,
)

from vaswani_hf import VaswaniConfig, convert_to_marian
from vaswani_hf.training import (
    COMPLETE_MARKER,
    DataArguments,
    ModelArguments,
    TrainingTimeBudget,
    VaswaniTrainer,
    VaswaniTrainingArguments,
    average_checkpoints,
    eq3_learning_rate,
    last_complete_checkpoint,
    load_averaged_model,
    parse_overrides,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def reversal_dataset(size: int = 200) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(size):
        n = int(torch.randint(2, 20, (1,), generator=generator))
        ids = torch.randint(4, 97, (n,), generator=generator).tolist() + [2]
        labels = ids[::-1][1:] + [2]
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": labels,
                "source_length": len(ids),
                "target_length": len(labels),
            }
        )
    return Dataset.from_list(rows)


def pad(features: list[dict]) -> dict:
    def stack(key, value):
        longest = max(len(f[key]) for f in features)
        return torch.tensor([f[key] + [value] * (longest - len(f[key])) for f in features])

    return {
        "input_ids": stack("input_ids", 0),
        "attention_mask": stack("attention_mask", 0),
        "labels": stack("labels", -100),
    }


def trainer_for(tmp_path, model, **overrides) -> VaswaniTrainer:
    fields = dict(
        output_dir=str(tmp_path),
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
        seed=1,
        max_tokens=256,
        warmup_steps=50,
        label_smoothing_factor=0.0,
    )
    args = VaswaniTrainingArguments(**{**fields, **overrides})
    return VaswaniTrainer(model=model, args=args, train_dataset=reversal_dataset(), data_collator=pad)


def test_defaults_are_the_papers():
    args = VaswaniTrainingArguments(output_dir="unused", use_cpu=True, report_to=[])
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay) == (0.9, 0.98, 1e-9, 0.0)
    assert (args.warmup_steps, args.label_smoothing_factor, args.lr_schedule) == (4000, 0.1, "eq3")


def test_learning_rate_follows_eq_3_and_adam_has_the_papers_hyperparameters(tmp_path):
    model = tiny_model()
    trainer = trainer_for(tmp_path, model, lr_scale=2.0)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    group = trainer.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.98) and group["eps"] == 1e-9 and group["weight_decay"] == 0.0
    step = 0
    for target in (1, 2, 25, 50, 51, 200, 999):
        while step + 1 < target:
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            step += 1
        # the lr of the target-th update: 2 * 32^-0.5 * min(step^-0.5, step * 50^-1.5)
        expected = 2.0 * 32**-0.5 * min(target**-0.5, target * 50**-1.5)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)
    assert eq3_learning_rate(4000, 512, 4000) == pytest.approx(512**-0.5 * 4000**-0.5)


def test_trainer_batches_by_tokens(tmp_path):
    model = tiny_model()
    seen = []  # padded source + target tokens of each batch the model receives
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].numel() + kwargs["labels"].numel()),
        with_kwargs=True,
    )
    trainer = trainer_for(tmp_path, model, num_train_epochs=1)
    trainer.train()
    assert seen and max(seen) <= 256
    assert len(seen) == len(trainer.get_train_dataloader())


def test_averaging_is_the_elementwise_mean_and_keeps_ties(tmp_path):
    folders = []
    for seed in range(5):
        folder = tmp_path / f"checkpoint-{seed}"
        tiny_model(seed=seed).save_pretrained(folder)
        folders.append(folder)
    averaged = average_checkpoints(folders)
    weights = [load_file(f / "model.safetensors") for f in folders]
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, sum(w[name] for w in weights) / 5, rtol=0, atol=1e-7)
    model = load_averaged_model(folders)
    assert model.lm_head.weight is model.model.shared.weight
    torch.testing.assert_close(model.model.shared.weight, averaged["model.shared.weight"])


def test_averaging_refuses_mismatched_checkpoints(tmp_path):
    tiny_model(seed=0).save_pretrained(tmp_path / "a")
    tiny_model(seed=0, vocab_size=50).save_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="has shape"):
        average_checkpoints([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        average_checkpoints([tmp_path / "missing"])


def test_a_checkpoint_without_its_completion_marker_is_never_resumed_from(tmp_path):
    for step, complete in ((10, True), (20, True), (30, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half-written")
        if complete:
            (folder / COMPLETE_MARKER).write_text("{}")
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-20"
    assert not (tmp_path / "checkpoint-30").exists()


def test_config_overrides_parse_values():
    assert parse_overrides("dropout=0.3, decoder_layers=4,activation_function=gelu") == {
        "dropout": 0.3,
        "decoder_layers": 4,
        "activation_function": "gelu",
    }
    with pytest.raises(ValueError, match="not field=value"):
        parse_overrides("dropout")


@pytest.mark.parametrize(
    "recipe", sorted(p.name for p in RECIPES.glob("*.yaml") if not p.name.startswith("accelerate"))
)
def test_shipped_recipes_parse(recipe):
    parser = HfArgumentParser((ModelArguments, DataArguments, VaswaniTrainingArguments))
    values = yaml.safe_load((RECIPES / recipe).read_text())
    # GPU recipes ask for bf16, which TrainingArguments refuses without a GPU: parse them as on a CPU
    values = {**values, "use_cpu": True, "bf16": False}
    model_args, data_args, training_args = parser.parse_dict(values)
    assert training_args.lr_schedule == "eq3" and training_args.label_smoothing_factor == 0.1
    # translation into German or French, or parsing into linearized trees (Sec. 6.3)
    assert data_args.source_lang == "en" and data_args.target_lang in {"de", "fr", "tree"}
    assert (data_args.target_lang == "tree") == data_args.dataset.endswith("treebank.zip")
    VaswaniConfig.from_preset(model_args.preset, **parse_overrides(model_args.config_overrides))


def test_time_budget_marks_and_stop_count_only_step_time(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("vaswani_hf.training.time.perf_counter", lambda: clock[0])
    budget = TrainingTimeBudget(budget_minutes=3, marks_minutes=[1, 2])
    state, control = TrainerState(), TrainerControl()
    for step in range(1, 6):
        state.global_step = step
        budget.on_step_begin(None, state, control)
        clock[0] += 40  # a 40-second step
        budget.on_step_end(None, state, control)
        clock[0] += 1000  # evaluation or saving between steps: not counted
        if step < 5:
            assert control.should_training_stop is False
        # 80 s > 1 min and 120 s >= 2 min: evaluate and save; 200 s > 3 min: save and stop
        assert control.should_evaluate == (step in (2, 3)), step
        assert control.should_save == (step in (2, 3, 5)), step
        control = TrainerControl()
    assert budget.reached == [[1, 2], [2, 3], [3, 5]]
    restored = TrainingTimeBudget(**budget.state()["args"])
    for name, value in budget.state()["attributes"].items():
        setattr(restored, name, value)
    assert restored.trained_seconds == 200 and restored.marks_minutes == []


def test_bf16_mixed_precision_trains_with_float32_master_weights(tmp_path):
    """`bf16: true` (the 8-GPU recipes) runs the forward under bfloat16 autocast; the weights and Adam stay float32
    and the loss falls like in float32. (On a CPU without bfloat16 units it is emulated and slow; see README.)"""
    losses = {}
    for bf16 in (False, True):
        model = tiny_model(seed=5)
        trainer = trainer_for(tmp_path / str(bf16), model, bf16=bf16, max_steps=60, lr_scale=0.2, warmup_steps=10)
        trainer.train()
        assert all(p.dtype == torch.float32 for p in model.parameters())
        batch = pad([reversal_dataset()[i] for i in range(32)])
        with torch.no_grad():
            losses[bf16] = model.eval()(**batch).loss.item()
    initial = tiny_model(seed=5)(**batch).loss.item()
    assert losses[True] < 0.9 * initial and losses[False] < 0.9 * initial, (initial, losses)
    assert losses[True] == pytest.approx(losses[False], rel=0.05)


def test_evaluation_leaves_the_generation_config_as_it_was(tmp_path):
    """Seq2SeqTrainer fills the model's generation config with defaults (max_length 20) when it evaluates with
    generate; that would replace the per-sentence length limit (source + 50, Sec. 6.1) in every later generate()
    and in the saved model."""
    model = tiny_model()
    before = model.generation_config.to_dict()
    trainer = trainer_for(tmp_path, model, per_device_eval_batch_size=8)
    trainer.compute_metrics = lambda prediction: {}  # with metrics to compute, evaluation generates
    trainer.evaluate(eval_dataset=reversal_dataset(16).remove_columns(["source_length", "target_length"]))
    assert model.generation_config.max_length is None
    assert model.generation_config.to_dict() == before


def test_training_step_with_label_smoothing_equals_the_trainers_label_smoother(tmp_path):
    # The model's fused label-smoothed loss gives the same loss and gradients as Seq2SeqTrainer's LabelSmoother.
    batch = pad([reversal_dataset(8)[i] for i in range(8)])
    ours, reference = tiny_model(seed=2), tiny_model(seed=2)
    batch["decoder_input_ids"] = ours.prepare_decoder_input_ids_from_labels(batch["labels"])  # as the collator does
    trainer = trainer_for(tmp_path / "ours", ours, label_smoothing_factor=0.1)
    plain = Seq2SeqTrainer(
        model=reference,
        args=Seq2SeqTrainingArguments(
            output_dir=str(tmp_path / "plain"), report_to=[], use_cpu=True, label_smoothing_factor=0.1
        ),
    )
    items = batch["labels"].ne(-100).sum()
    losses = [t.training_step(t.model, dict(batch), items) for t in (trainer, plain)]
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p), q in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)
    # another model (MarianMTModel) keeps the Trainer's LabelSmoother
    marian = convert_to_marian(reference).train()
    marian_trainer = trainer_for(tmp_path / "marian", marian, label_smoothing_factor=0.1)
    torch.testing.assert_close(marian_trainer.compute_loss(marian, dict(batch)), losses[1])
    # evaluation still reports the label-smoothed loss from the logits
    ours.eval()
    torch.testing.assert_close(
        trainer.compute_loss(ours, dict(batch)), plain.compute_loss(reference.eval(), dict(batch))
    )

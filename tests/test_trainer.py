"""VaswaniTrainer: token batches, Eq. 3 and Adam, no gradient clipping by default, mixed precision, evaluation,
the fused label-smoothed loss in training."""

import pytest
import torch
from helpers import pad, reversal_dataset, tiny_model, trainer_for
from transformers import (
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
)
from transformers.trainer_pt_utils import LabelSmoother

from vaswani_hf import convert_to_marian
from vaswani_hf.trainer import eq3_learning_rate


class GradientNorms(TrainerCallback):
    """Records the total gradient norm that each optimizer step receives (after any clipping)."""

    def __init__(self):
        self.norms = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.norms.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())


def test_gradients_are_not_clipped_unless_max_grad_norm_is_set(tmp_path):
    """The paper and fairseq's reproduction (--clip-norm 0) clip no gradient: by default Adam gets the gradients
    whose norm the Trainer logs (before clipping); with max_grad_norm set, it gets them clipped to that norm."""
    received, logged = {}, {}
    for max_grad_norm in (None, 0.5):
        setting = {} if max_grad_norm is None else {"max_grad_norm": max_grad_norm}
        trainer = trainer_for(
            tmp_path / str(max_grad_norm),
            tiny_model(seed=5),
            max_steps=3,
            logging_strategy="steps",
            logging_steps=1,
            **setting,
        )
        norms = GradientNorms()
        trainer.add_callback(norms)
        trainer.train()
        received[max_grad_norm] = norms.norms
        logged[max_grad_norm] = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    assert min(logged[None]) > 1.0  # above the Trainer's default max_grad_norm of 1.0 and the 0.5 set here
    assert received[None] == pytest.approx(logged[None], rel=1e-5)
    assert logged[0.5][0] == pytest.approx(logged[None][0], rel=1e-5)  # the same first gradient, then clipped
    assert received[0.5] == pytest.approx([0.5] * 3, rel=1e-4) and min(logged[0.5]) > 0.5


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


def test_evaluation_without_generate_reports_the_label_smoothed_loss(tmp_path):
    # forward()'s `label_smoothing` is no label: counted as one, no batch would seem to have labels, and no eval_loss
    model = tiny_model(seed=2)
    dataset = reversal_dataset(16).remove_columns(["source_length", "target_length"])
    trainer = trainer_for(
        tmp_path, model, label_smoothing_factor=0.1, predict_with_generate=False, per_device_eval_batch_size=16
    )
    assert trainer.label_names == ["labels"]

    def collate(features: list[dict]) -> dict:  # as DataCollatorForSeq2Seq(model=...) does
        batch = pad(features)
        return batch | {"decoder_input_ids": model.prepare_decoder_input_ids_from_labels(batch["labels"])}

    trainer.data_collator = collate
    metrics = trainer.evaluate(eval_dataset=dataset)
    batch = collate([dataset[i] for i in range(16)])
    with torch.no_grad():
        expected = LabelSmoother(epsilon=0.1)(model.eval()(**batch), batch["labels"])
    assert metrics["eval_loss"] == pytest.approx(expected.item(), rel=1e-5)


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

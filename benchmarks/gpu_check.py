"""The check of issue 24 on a CUDA machine, in one command: the device tests (tests/test_cuda.py, marker `cuda`), the
speed of ours beside MarianMTModel holding the same weights (training step at the base preset, 37k vocabulary, 25,088
target tokens, in float32, TF32 and bf16; generation of batches of 32 and 128, greedy and beam 4, in float32 and
bf16), what the choices made for CPUs cost there, then the Multi30k En-De recipe for a few minutes in bf16 and in
fp32 (loss curves and BLEU side by side). Writes gpu.json, gpu.md and gpu_curves.png to --output_dir.

bash scripts/gpu_check.sh                  # on the GPU machine (installs the wheels carried in .gpu_carry first)
python benchmarks/gpu_check.py --dry       # every stage at toy sizes on the CPU, in seconds (tests/test_gpu_check.py)
"""

import argparse
import gzip
import importlib.metadata
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import device_speed
import torch
import yaml

from vaswani_hf import VaswaniForConditionalGeneration
from vaswani_hf.files import read_json, write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
CARRIED_CORPUS = ROOT / ".gpu_carry" / "multi30k"
SHARED_CORPUS = ROOT.parent / "shared" / "data" / "multi30k"
RECIPE = ROOT / "recipes" / "multi30k_en_de_cpu.yaml"
SPLIT_STEMS = ("train", "val", "test_2016_flickr")
PRECISIONS = ("bf16", "fp32")
TOY_MODEL = (
    "d_model=32,encoder_layers=1,decoder_layers=1,encoder_attention_heads=2,decoder_attention_heads=2,"
    "encoder_ffn_dim=64,decoder_ffn_dim=64"
)


def environment(device: torch.device) -> dict:
    """The device, its software, and the versions of the packages the run used."""
    found = {"device": str(device), "python": platform.python_version(), "torch": torch.__version__}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        found.update(
            gpu=properties.name,
            gpu_memory_gb=round(properties.total_memory / 2**30, 1),
            multiprocessors=properties.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    found["cpu_cores"] = os.cpu_count()
    for name in ("transformers", "accelerate", "datasets", "tokenizers", "huggingface_hub", "sacrebleu"):
        found[name] = importlib.metadata.version(name)
    return found


def unmet_requirements() -> list[str]:
    """vaswani-hf's dependencies (pyproject.toml), and theirs, that the installed packages do not satisfy, each with
    what is there: the GPU machine's image has its own versions, and what it lacks travels as wheels
    (scripts/prepare_gpu_carry.sh)."""
    from packaging.requirements import Requirement

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    unmet, checked = [], set()
    for line, needed_by in [(line, "vaswani-hf") for line in ours] + [
        (line, Requirement(dependency).name) for dependency in ours for line in _requirements_of(dependency)
    ]:
        requirement = Requirement(line)
        if (requirement.marker and not requirement.marker.evaluate({"extra": ""})) or str(requirement) in checked:
            continue
        checked.add(str(requirement))
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(f"{requirement} (for {needed_by}): not installed")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{requirement} (for {needed_by}): {version} installed")
    return unmet


def _requirements_of(requirement_line: str) -> list[str]:
    from packaging.requirements import Requirement

    try:
        return importlib.metadata.requires(Requirement(requirement_line).name) or []
    except importlib.metadata.PackageNotFoundError:
        return []


def run_tests(device: torch.device, work: Path) -> dict:
    """tests/test_cuda.py's CUDA tests (`-m cuda`), in a process of their own; on a CPU they are all skipped."""
    command = [sys.executable, "-m", "pytest", "tests/test_cuda.py", "-m", "cuda", "-q", "-p", "no:cacheprovider"]
    command += ["--basetemp", str(work / "pytest")]
    finished = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    summary = finished.stdout.strip().splitlines()[-1] if finished.stdout.strip() else ""
    counts = {
        word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", summary)
    }
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", finished.stdout, flags=re.MULTILINE)
    return {
        "command": shlex.join(command[1:]),
        "returncode": finished.returncode,
        "summary": summary,
        **counts,
        "failed_tests": failed,
        "output_tail": finished.stdout[-3000:] if failed else "",
    }


def speed(device: torch.device, dry: bool) -> dict:
    sizes = device_speed.Sizes.dry() if dry else device_speed.Sizes.gpu()
    on_gpu = device.type == "cuda"
    precisions = ["float32", "tf32", "bf16"] if on_gpu else ["float32", "bf16"]
    dtypes = [torch.float32, torch.bfloat16] if on_gpu else [torch.float32]
    config = sizes.config
    with torch.device("meta"):
        parameters = sum(p.numel() for p in VaswaniForConditionalGeneration(config).parameters())
    return {
        "model": f"d_model {config.d_model}, {config.encoder_layers}+{config.decoder_layers} layers, "
        f"vocabulary {config.vocab_size}, {parameters:,} parameters",
        "training_step": device_speed.training_speed(sizes, precisions, device),
        "generation": device_speed.generation_speed(sizes, dtypes, device),
        "cpu_choices": device_speed.cpu_choice_costs(sizes, device),
    }


def write_corpus(source: Path, folder: Path, pairs: int | None) -> Path:
    """`source`'s Multi30k files, all of them or the first `pairs` training pairs (a tenth of that, at least 10,
    of validation and test), as the recipe reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem in SPLIT_STEMS:
        keep = None if pairs is None else pairs if stem == "train" else max(10, pairs // 10)
        for lang in ("en", "de"):
            with gzip.open(source / f"{stem}.{lang}.gz", "rt", encoding="utf-8") as file:
                lines = file.read().splitlines()
            (folder / f"{stem}.{lang}").write_text("\n".join(lines[:keep]) + "\n", encoding="utf-8")
    return folder


def recipe_runs(corpus: Path, work: Path, device: torch.device, minutes: float, dry: bool) -> dict:
    """recipes/multi30k_en_de_cpu.yaml through scripts/train.py, once in bf16 and once in fp32 (strict, no TF32), each
    for `minutes` of training; the dry run trains a toy model for 3 updates on the CPU."""
    base = yaml.safe_load(RECIPE.read_text())
    base.update(dataset=str(corpus), use_cpu=device.type == "cpu", max_train_minutes=minutes)
    base.update(report_to="none", disable_tqdm=True, logging_steps=50)
    if dry:
        base.update(vocab_size=400, max_tokens=512, warmup_steps=10, max_steps=3, save_steps=1, logging_steps=1)
        base.update(config_overrides=TOY_MODEL, eval_steps=1, checkpoints_to_average=2)
    results = {}
    environment_variables = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for precision in PRECISIONS:
        recipe = {**base, "bf16": precision == "bf16", "output_dir": str(work / f"multi30k-{precision}")}
        recipe_path = work / f"recipe-{precision}.yaml"
        recipe_path.write_text(yaml.safe_dump(recipe))
        environment_variables["HF_DATASETS_CACHE"] = str(work / f"datasets-{precision}")
        started = time.perf_counter()
        finished = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "train.py"), str(recipe_path)],
            cwd=ROOT,
            env=environment_variables,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seconds = time.perf_counter() - started
        (work / f"train-{precision}.log").write_text(finished.stdout)
        if finished.returncode != 0:
            results[precision] = {"returncode": finished.returncode, "output_tail": finished.stdout[-3000:]}
            continue
        results[precision] = run_summary(read_json(Path(recipe["output_dir"]) / "metrics.json"), seconds)
    results["recipe"] = {key: value for key, value in base.items() if key != "dataset"}
    return results


def run_summary(metrics: dict, seconds: float) -> dict:
    """What one recipe run measured: its updates and time, its loss curve, and the final model's BLEU."""
    train = metrics["train"]
    final = metrics["evaluation"][metrics["final_model"]]
    history = metrics["log_history"]
    return {
        "updates": max(entry["step"] for entry in history),
        "trained_minutes": round(train["trained_minutes"], 2),
        "updates_per_second": round(max(entry["step"] for entry in history) / (train["trained_minutes"] * 60), 2),
        "wall_seconds_with_evaluation": round(seconds, 1),
        "final_model": metrics["final_model"],
        "validation_bleu": round(final["validation_bleu"]["score"], 2),
        "test_bleu": round(final["test_bleu"]["score"], 2),
        "bleu_by_candidate": {
            name: {split: round(scores[f"{split}_bleu"]["score"], 2) for split in ("validation", "test")}
            for name, scores in metrics["evaluation"].items()
        },
        "loss_curve": [[entry["step"], round(entry["loss"], 4)] for entry in history if "loss" in entry],
    }


def plot_curves(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4))
    for precision in PRECISIONS:
        if "loss_curve" in runs.get(precision, {}):
            steps, losses = zip(*runs[precision]["loss_curve"], strict=True)
            axes.plot(steps, losses, label=f"{precision}: test BLEU {runs[precision]['test_bleu']}")
    axes.set(xlabel="update", ylabel="training loss (label-smoothed)", title="Multi30k En-De, small preset")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def markdown(results: dict) -> str:
    """The figures of `results` as gpu.md."""
    found = results["environment"]
    lines = [
        "# GPU check (issue 24)",
        "",
        f"Command: `{results['command']}`, {results['date']}, {results['total_minutes']} minutes in all.",
        "",
    ]
    lines += ["- " + ", ".join(f"{key} {value}" for key, value in found.items()), ""]
    if results.get("unmet_requirements"):
        lines += ["Unmet requirements: " + "; ".join(results["unmet_requirements"]), ""]
    if "tests" in results:
        tests = results["tests"]
        lines += ["## Tests", "", f"`{tests['command']}`: {tests['summary']}", ""]
        lines += [f"- failed: {name}" for name in tests["failed_tests"]] + [""]
    if "speed" in results:
        speed = results["speed"]
        training = speed["training_step"]
        lines += ["## Speed, ours / MarianMTModel with the same weights", "", f"Model: {speed['model']}.", ""]
        tokens = training["target_tokens_per_step"]
        lines += [f"Training step ({tokens:,} target tokens, label smoothing 0.1, fused AdamW):", ""]
        lines += ["| precision | ours tokens/s | Marian tokens/s | ours / Marian | peak MB ours | peak MB Marian |"]
        lines += ["| --- | --- | --- | --- | --- | --- |"]
        for precision, row in training.items():
            if isinstance(row, dict):
                lines.append(
                    f"| {precision} | {row['ours']['target_tokens_per_second']:,} | "
                    f"{row['marian']['target_tokens_per_second']:,} | {row['ratio_ours_to_marian']}x | "
                    f"{row['ours']['peak_memory_mb']} | {row['marian']['peak_memory_mb']} |"
                )
        lines += ["", "Generation (exactly the same number of new tokens for both):", ""]
        lines += ["| case | ours tokens/s | Marian tokens/s | ours / Marian | same tokens |"]
        lines += ["| --- | --- | --- | --- | --- |"]
        for case, row in speed["generation"].items():
            lines.append(
                f"| {case} | {row['ours']['target_tokens_per_second']:,} | "
                f"{row['marian']['target_tokens_per_second']:,} | {row['ratio_ours_to_marian']}x | "
                f"{row['same_tokens']} |"
            )
        lines += ["", "Choices made for CPUs, measured here:", ""]
        lines += [f"- {name}: {values}" for name, values in speed["cpu_choices"].items()] + [""]
    if "recipe" in results:
        runs = results["recipe"]
        lines += ["## Multi30k En-De recipe: bf16 against fp32", "", "![loss curves](gpu_curves.png)", ""]
        lines += ["| | " + " | ".join(PRECISIONS) + " |", "| --- " * (len(PRECISIONS) + 1) + "|"]
        for key in ("updates", "trained_minutes", "updates_per_second", "final_model", "validation_bleu", "test_bleu"):
            lines.append(f"| {key} | " + " | ".join(str(runs[p].get(key, "failed")) for p in PRECISIONS) + " |")
        curves = {p: dict(runs[p].get("loss_curve", [])) for p in PRECISIONS}
        common = sorted(set.intersection(*(set(c) for c in curves.values())))
        if common:
            shown = common[:: max(1, len(common) // 10)]
            lines += ["", "Training loss at the same updates:", "", "| update | " + " | ".join(PRECISIONS) + " |"]
            lines += ["| --- " * (len(PRECISIONS) + 1) + "|"]
            lines += [f"| {step} | " + " | ".join(str(curves[p][step]) for p in PRECISIONS) + " |" for step in shown]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="toy sizes on the CPU: checks that every stage runs")
    parser.add_argument("--stages", default="tests,speed,recipe", help="comma-separated, of tests, speed, recipe")
    parser.add_argument("--corpus", help="Multi30k folder (default: .gpu_carry/multi30k, else ../shared/data/multi30k)")
    parser.add_argument("--train_minutes", type=float, default=1.5, help="training time of each recipe run")
    parser.add_argument("--output_dir", default=str(ROOT / "docs" / "benchmarks"))
    parser.add_argument("--work_dir", default=str(ROOT / "runs" / "gpu_check"), help="runs, logs, caches")
    args = parser.parse_args(argv)
    stages = args.stages.split(",")
    if unknown := set(stages) - {"tests", "speed", "recipe"}:
        parser.error(f"unknown stages {sorted(unknown)}; choices: tests, speed, recipe")
    if not args.dry and not torch.cuda.is_available():
        parser.error("no CUDA device: this check is for a GPU machine (--dry runs it at toy sizes on the CPU)")
    device = torch.device("cpu" if args.dry else "cuda")
    work, output = Path(args.work_dir), Path(args.output_dir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {
        "command": "python benchmarks/gpu_check.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": environment(device),
        "unmet_requirements": unmet_requirements(),
    }
    for stage in stages:
        stage_started = time.perf_counter()
        if stage == "tests":
            results["tests"] = run_tests(device, work)
        elif stage == "speed":
            results["speed"] = speed(device, args.dry)
        else:
            corpus = Path(args.corpus) if args.corpus else CARRIED_CORPUS if CARRIED_CORPUS.is_dir() else SHARED_CORPUS
            sliced = write_corpus(corpus, work / "multi30k", 200 if args.dry else None)
            results["recipe"] = recipe_runs(sliced, work, device, 0.5 if args.dry else args.train_minutes, args.dry)
            plot_curves(results["recipe"], output / "gpu_curves.png")
        results.setdefault("stage_seconds", {})[stage] = round(time.perf_counter() - stage_started, 1)
        results["total_minutes"] = round((time.perf_counter() - started) / 60, 2)
        # after each stage: a run stopped at its time limit keeps what it measured
        write_json(output / "gpu.json", results)
        write_text(output / "gpu.md", markdown(results))
        print(f"[gpu_check] {stage}: {results['stage_seconds'][stage]} s, written to {output / 'gpu.md'}", flush=True)


if __name__ == "__main__":
    main()

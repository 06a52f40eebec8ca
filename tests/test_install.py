"""A normal (non-editable) install works: the wheel built from the checkout, installed into a fresh virtualenv where
the checkout is not importable, runs the console commands on a trained run folder."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow

SOURCES = "A man in a red shirt is riding a bike.\n\nTwo dogs are playing in the snow.\n"


def checked(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory) -> Path:
    """A virtualenv holding the package from its wheel; its dependencies come from this test's environment through
    a .pth line (a plain path: the editable install's own .pth files there are not run, so the checkout stays out)."""
    tmp_path = tmp_path_factory.mktemp("install")
    source = tmp_path / "source"  # the files a clone has (tracked, or new and not ignored): a build leaves no trace
    listed = checked(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    checked([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(source)])
    (wheel,) = wheels.glob("vaswani_hf-*.whl")

    venv = tmp_path / "venv"
    checked([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = checked([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout
    (Path(purelib.strip()) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    checked([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)])
    return venv


def test_the_installed_package_publishes_translates_and_exports_outside_the_checkout(
    installed_venv, trained_run, tmp_path
):
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    bin_dir = installed_venv / "bin"
    where = checked(
        [str(bin_dir / "python"), "-c", "import vaswani_hf.hub as hub; print(hub.__file__, hub.DEFAULT_CARD_TEMPLATE)"],
        cwd=tmp_path,
        env=env,
    ).stdout.split()
    package_file, template = map(Path, where)
    assert package_file.is_relative_to(installed_venv) and not package_file.is_relative_to(ROOT)
    assert template.is_relative_to(installed_venv) and template.is_file()

    repo_folder = tmp_path / "repo"
    publish = [str(bin_dir / "vaswani-publish"), "--run_dir", str(trained_run), "--repo_id", "org/vaswani-test"]
    checked([*publish, "--repo_folder", str(repo_folder), "--dry_run"], cwd=tmp_path, env=env)
    card = (repo_folder / "README.md").read_text(encoding="utf-8")
    assert card.lstrip().startswith("---") and "# vaswani-test\n" in card and "Test BLEU **" in card

    translated = checked(
        [str(bin_dir / "vaswani-translate"), str(trained_run), "--num_beams", "1"], input=SOURCES, cwd=tmp_path, env=env
    ).stdout
    lines = translated.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[0] and lines[2] and lines[3] == ""

    checked([str(bin_dir / "vaswani-export"), str(trained_run), str(tmp_path / "ct2")], cwd=tmp_path, env=env)
    assert (tmp_path / "ct2" / "model.bin").is_file() and (tmp_path / "ct2" / "tokenizer.json").is_file()


# The libraries only some commands need: `import vaswani_hf` must not load them (transformers itself imports jinja2
# whenever it is installed, and torch requires it, so for jinja2 the test is that vaswani_hf adds none of it).
COMMAND_ONLY_LIBRARIES = ("matplotlib", "tensorboard", "ctranslate2", "jinja2")
IMPORT_CHECK = f"""
import json, sys
libraries = {COMMAND_ONLY_LIBRARIES!r}
loaded = lambda: {{name for name in sys.modules if name.split(".")[0] in libraries}}
import transformers
by_transformers = loaded()
import vaswani_hf
print(json.dumps({{"by_transformers": sorted(by_transformers), "by_vaswani_hf": sorted(loaded() - by_transformers)}}))
"""
INSTALLED_FILES = """
from importlib.metadata import files
print("\\n".join(str(path) for path in files("vaswani-hf")))
"""


def test_the_installed_package_is_the_library_alone(installed_venv, tmp_path):
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    python = str(installed_venv / "bin" / "python")
    installed = checked([python, "-c", INSTALLED_FILES], cwd=tmp_path, env=env).stdout.split()
    assert any(path.startswith("vaswani_hf/") for path in installed), installed
    harness = [path for path in installed if "benchmark" in path or "experiment" in path]
    assert not harness, f"the benchmarks and experiments belong to the clone, not the wheel: {harness}"

    loaded = json.loads(checked([python, "-c", IMPORT_CHECK], cwd=tmp_path, env=env).stdout)
    assert loaded["by_vaswani_hf"] == [], f"import vaswani_hf loads what only commands need: {loaded['by_vaswani_hf']}"
    assert not {name.split(".")[0] for name in loaded["by_transformers"]} - {"jinja2"}, loaded

"""Publishing: the repo folder and its card, an upload to a loopback Hub and back, and use from an offline cache."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import ROOT, offline_hub_cache
from huggingface_hub import ModelCard
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from vaswani_hf.hub import (
    CODE_FILES,
    build_repo_folder,
    card_metadata_problems,
    render_model_card,
    validate_repo_folder,
)

pytestmark = pytest.mark.slow

TOKEN = "hf_loopbackTestToken0123456789"  # a made-up token: it must never be written anywhere
SOURCES = ["A man in a red shirt is riding a bike.", "Two dogs are playing in the snow.", "A woman sings."]


@pytest.fixture(scope="module")
def repo_folder(trained_run, tmp_path_factory) -> Path:
    return build_repo_folder(trained_run, tmp_path_factory.mktemp("repo") / "vaswani-test", "org/vaswani-test")


def sha256_of_files(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run_python(code: str, env: dict, cwd: Path, block_package: bool = False) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter; with `block_package`, `import vaswani_hf` fails there."""
    prelude = "import sys; sys.modules['vaswani_hf'] = None\n" if block_package else ""
    env = {**os.environ, "PYTHONPATH": "", **env}
    command = [sys.executable, "-c", prelude + textwrap.dedent(code)]
    # stdin closed: a trust_remote_code prompt would fail the run instead of waiting
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_repo_folder_holds_everything_a_user_needs_and_nothing_unsafe(trained_run, repo_folder):
    names = {p.name for p in repo_folder.iterdir()}
    expected = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert expected | set(CODE_FILES) | {"README.md", "metrics.json", "training_curves.png"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    config = json.loads((repo_folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_vaswani.VaswaniForConditionalGeneration"
    assert config["custom_pipelines"]["translation"]["impl"] == "pipeline_vaswani.TranslationPipeline"
    generation = json.loads((repo_folder / "generation_config.json").read_text())
    assert (generation["num_beams"], generation["length_penalty"]) == (4, 0.6)
    assert (repo_folder / "metrics.json").read_bytes() == (trained_run / "metrics.json").read_bytes()


def test_model_card_metadata_is_valid_and_carries_the_measured_bleu(trained_run, repo_folder):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    measured = metrics["evaluation"][metrics["final_model"]]["test_bleu"]
    card = ModelCard.load(repo_folder / "README.md")
    data = card.data
    assert card_metadata_problems(data) == []
    assert (data.license, data.pipeline_tag, data.library_name) == ("apache-2.0", "translation", "transformers")
    assert data.language == ["en", "de"]
    (result,) = data.eval_results
    assert (result.metric_type, result.dataset_split) == ("bleu", "test")
    assert result.metric_value == round(measured["score"], 2)
    assert result.metric_config == measured["signature"]
    assert card.text.lstrip().startswith("# vaswani-test\n")
    assert f"Test BLEU **{measured['score']:.2f}**" in card.text
    assert "```bibtex" in card.text and "Attention Is All You Need" in card.text


def test_the_card_names_the_dataset_the_run_loaded_not_the_missing_folder(trained_run):
    """A run whose local folder was missing trained on its `hub_dataset`; metrics.json records what was loaded, and
    the card links that Hub dataset, on any machine (the folder's existence at publishing time does not matter)."""
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["settings"]["data"]["loaded"]["dataset"] == metrics["settings"]["data"]["dataset"]
    metrics["settings"]["data"]["dataset"] = "../shared/data/no-such-folder"
    metrics["settings"]["data"]["loaded"] = {"dataset": "bentrevett/multi30k", "dataset_config": None}
    model = AutoModelForSeq2SeqLM.from_pretrained(trained_run)
    card = render_model_card(metrics, model, "org/vaswani-test")
    assert card.data.datasets == ["bentrevett/multi30k"]
    assert card.data.eval_results[0].dataset_type == "bentrevett/multi30k"
    assert "no-such-folder" not in str(card)
    # a local corpus folder, even one absent where the card is rendered, is not named as a Hub dataset
    metrics["settings"]["data"]["loaded"] = {"dataset": "../data/multi30k", "dataset_config": None}
    card = render_model_card(metrics, model, "org/vaswani-test")
    assert card.data.datasets is None and card.data.eval_results[0].dataset_type == "multi30k"


def test_card_mistakes_the_hub_would_reject_are_caught(repo_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(repo_folder, broken)
    card = (broken / "README.md").read_text()
    card = card.replace("license: apache-2.0", "license: Apache 2.0").replace(
        "pipeline_tag: translation", "pipeline_tag: translaton"
    )
    (broken / "README.md").write_text(card)
    with pytest.raises(ValueError) as error:
        validate_repo_folder(broken)
    assert "license 'Apache 2.0'" in str(error.value) and "pipeline_tag is 'translaton'" in str(error.value)


@pytest.mark.parametrize(
    "removed, named", [("tokenizer.json", "tokenizer.json (the tokenizer)"), ("model.safetensors", "model.safetensors")]
)
def test_dry_run_on_an_incomplete_folder_names_what_is_missing_and_uploads_nothing(
    trained_run, tmp_path, removed, named
):
    from hub_server import serve

    incomplete = tmp_path / "incomplete"
    shutil.copytree(trained_run, incomplete, ignore=shutil.ignore_patterns("checkpoint-*", removed))
    server, state = serve(TOKEN)
    try:
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_TOKEN": TOKEN}
        command = [sys.executable, str(ROOT / "scripts" / "publish.py"), "--run_dir", str(incomplete)]
        result = subprocess.run(
            [*command, "--repo_id", "org/vaswani-test", "--dry_run"], env=env, capture_output=True, text=True
        )
    finally:
        server.shutdown()
    assert result.returncode != 0
    assert named in result.stderr and "cannot be published" in result.stderr
    assert state.requests == []


def test_publish_to_a_loopback_hub_then_download_the_same_files(trained_run, tmp_path):
    from hub_server import serve

    server, state = serve(TOKEN)
    endpoint = f"http://127.0.0.1:{server.server_port}"
    env = {"HF_ENDPOINT": endpoint, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf_home")}
    folder = tmp_path / "built"
    try:
        publish = [sys.executable, str(ROOT / "scripts" / "publish.py"), "--run_dir", str(trained_run)]
        publish += ["--repo_id", "org/vaswani-test", "--repo_folder", str(folder)]
        published = subprocess.run(
            [*publish, "--private", "--commit_message", "Vaswani small, 20 steps"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
        )
        assert published.returncode == 0, published.stderr[-4000:]
        repo = state.repos["org/vaswani-test"]
        assert repo.private
        commit = repo.commits[repo.branches["main"]]
        assert commit.message == "Vaswani small, 20 steps"
        local = sha256_of_files(folder)
        assert sorted(commit.added) == sorted(local)  # one commit with every file of the folder
        assert {name: hashlib.sha256(commit.files[name]).hexdigest() for name in local} == local
        # huggingface_hub asks these two anonymously; everything about the repo went with the token
        unauthorised = {path for _, path, authorised in state.requests if not authorised}
        assert unauthorised <= {"/api/validate-yaml", "/api/agent-harnesses"}
        assert state.validated_cards and "pipeline_tag: translation" in state.validated_cards[-1]

        # a second publish to a branch: the repo exists (409, accepted), the branch is made, main stays as it was
        main_before = repo.branches["main"]
        to_branch = subprocess.run(
            [*publish, "--revision", "averaged", "--commit_message", "On a branch"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
        )
        assert to_branch.returncode == 0, to_branch.stderr[-4000:]
        assert repo.branches["main"] == main_before
        assert repo.commits[repo.branches["averaged"]].message == "On a branch"

        run_python(
            f"""
            from huggingface_hub import snapshot_download
            print(snapshot_download("org/vaswani-test", local_dir={str(tmp_path / "download")!r}))
            """,
            env,
            tmp_path,
        )
    finally:
        server.shutdown()
    downloaded = sha256_of_files(tmp_path / "download")
    downloaded = {name: digest for name, digest in downloaded.items() if not name.startswith(".")}
    assert downloaded == local
    # the token reached the server as a header only: never in output, the built folder or the download
    assert TOKEN not in published.stdout + published.stderr
    for path in [*folder.rglob("*"), *(tmp_path / "download").rglob("*")]:
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


def test_publishing_never_deletes_a_folder_it_did_not_build(trained_run, tmp_path, monkeypatch, capsys):
    """The run folder, a folder holding it and the current directory are never repo folders, even with --overwrite
    and --dry_run; another non-empty folder only with --overwrite; publish's own earlier build is rebuilt."""
    from vaswani_hf.cli.publish import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = sha256_of_files(run)
    publish = ["--run_dir", str(run), "--repo_id", "org/vaswani-test", "--dry_run"]

    def refused(*flags: str) -> str:
        with pytest.raises(SystemExit) as exit:
            main([*publish, *flags])
        assert exit.value.code == 1
        return capsys.readouterr().err

    for target, named in ((run, "is the training run"), (tmp_path, "holds the training run")):
        for overwrite in ([], ["--overwrite"]):
            assert named in refused("--repo_folder", str(target), *overwrite)
    assert sha256_of_files(run) == before  # checkpoints, tokenizer, weights: all as they were
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("keep me")
    monkeypatch.chdir(work)
    assert "is the current directory" in refused("--repo_folder", ".", "--overwrite")
    assert [p.name for p in work.iterdir()] == ["mine.txt"]

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    assert f"{notes} exists and is not empty (mine.txt)" in refused("--repo_folder", str(notes))
    assert (notes / "mine.txt").read_text() == "keep me"
    main([*publish, "--repo_folder", str(notes), "--overwrite"])
    assert (notes / "README.md").is_file() and not (notes / "mine.txt").exists()

    for _ in range(2):  # the default folder, run/hub/org--vaswani-test: built, then rebuilt without a flag
        main(publish)
    built = run / "hub" / "org--vaswani-test"
    validate_repo_folder(built)
    (built / "notes.txt").write_text("mine")
    assert "now also holds ['notes.txt']" in refused()
    assert (built / "notes.txt").read_text() == "mine"


def test_a_visibility_other_than_the_existing_repos_is_refused_before_any_upload(trained_run, tmp_path):
    from hub_server import serve
    from huggingface_hub import HfApi

    server, state = serve(TOKEN)
    endpoint = f"http://127.0.0.1:{server.server_port}"
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf_home")}
    folder = tmp_path / "built"
    publish = [sys.executable, str(ROOT / "scripts" / "publish.py"), "--run_dir", str(trained_run)]
    publish += ["--repo_folder", str(folder)]
    try:
        api = HfApi(endpoint=endpoint, token=TOKEN)
        api.create_repo("org/public-model", private=False)
        api.create_repo("org/private-model", private=True)
        cases = [
            ("org/public-model", ["--private"], "org/public-model exists as a public repo, but a private one"),
            ("org/private-model", ["--private", "false"], "org/private-model exists as a private repo, but a public"),
        ]
        for repo_id, flags, message in cases:
            result = subprocess.run([*publish, "--repo_id", repo_id, *flags], env=env, capture_output=True, text=True)
            assert result.returncode != 0 and message in result.stderr, result.stderr[-3000:]
            assert "Published" not in result.stdout
        assert [len(state.repos[repo].commits) for repo in ("org/public-model", "org/private-model")] == [1, 1]
        assert not [path for _, path, _ in state.requests if "/preupload/" in path or "/commit/" in path]
        assert not folder.exists()  # refused before the folder was built
        # the visibility the repo has is accepted
        result = subprocess.run(
            [*publish, "--repo_id", "org/public-model", "--private", "false"], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-3000:]
    finally:
        server.shutdown()
    repo = state.repos["org/public-model"]
    assert not repo.private and "README.md" in repo.commits[repo.branches["main"]].files


def test_offline_cache_layout_serves_auto_class_pipeline_and_card_snippets(repo_folder, tmp_path):
    """The published folder as `org/vaswani-test` in a Hub cache, HF_HUB_OFFLINE=1: the card's usage snippets run,
    with the package and (trust_remote_code) without it, and translate a batch exactly like model.generate."""
    env = offline_hub_cache(repo_folder, "org/vaswani-test", tmp_path)

    model = AutoModelForSeq2SeqLM.from_pretrained(repo_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(repo_folder)
    batch = tokenizer(SOURCES, return_tensors="pt", padding=True)
    expected = tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True)

    snippets = re.findall(r"```python\n(.*?)```", (repo_folder / "README.md").read_text(), re.S)
    with_package, without_package = [snippet for snippet in snippets if "pipeline(" in snippet]
    check = f"""
    import json
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline
    remote = {{"trust_remote_code": True}} if sys.modules.get("vaswani_hf", 0) is None else {{}}
    model = AutoModelForSeq2SeqLM.from_pretrained("org/vaswani-test", **remote)
    tokenizer = AutoTokenizer.from_pretrained("org/vaswani-test", **remote)
    batch = tokenizer({SOURCES!r}, return_tensors="pt", padding=True)
    generated = tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True)
    translator = pipeline("translation", model="org/vaswani-test", **remote)
    piped = [t["translation_text"] for t in translator({SOURCES!r}, batch_size=2)]
    print(json.dumps({{"generated": generated, "piped": piped, "model": type(model).__module__,
                       "pipeline": type(translator).__module__}}))
    """
    for snippet, block_package in ((with_package, False), (without_package, True)):
        code = "import sys\n" + snippet + textwrap.dedent(check)
        output = run_python(code, env, tmp_path, block_package=block_package).stdout.splitlines()
        assert output[0].startswith("[{'translation_text': ")  # the card's own print
        result = json.loads(output[-1])
        assert result["generated"] == expected and result["piped"] == expected
        where = "transformers_modules" if block_package else "vaswani_hf"
        assert result["model"].startswith(where) and result["pipeline"].startswith(where)

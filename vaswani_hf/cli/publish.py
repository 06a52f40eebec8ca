"""Publish a trained model to the Hugging Face Hub (or build and check the repo folder only, with --dry_run).

    vaswani-publish --run_dir runs/multi30k_en_de_small --repo_id org/name --dry-run
    HF_TOKEN=... vaswani-publish --run_dir runs/multi30k_en_de_small --repo_id org/name --private

The token comes from HF_TOKEN or the saved `hf auth login`, never from the command line; the endpoint from
HF_ENDPOINT, as in huggingface_hub.
"""

from dataclasses import dataclass, field

from transformers import HfArgumentParser

from vaswani_hf.cli import input_errors_as_messages
from vaswani_hf.hub import publish


@dataclass
class PublishArguments:
    """What `vaswani-publish` uploads (a finished training run's folder), where, and how."""

    run_dir: str = field(metadata={"help": "output folder of scripts/train.py"})
    repo_id: str = field(metadata={"help": "org/name on the Hub"})
    repo_folder: str | None = field(
        default=None,
        metadata={
            "help": "where to build the repo folder (default RUN_DIR/hub/ORG--NAME); an existing non-empty folder "
            "that publish did not build is refused unless --overwrite; the run folder and the current directory "
            "never are targets"
        },
    )
    # --private alone means true; without it an existing repo keeps its visibility and a new one is public
    private: bool | None = field(
        default=None,
        metadata={
            "nargs": "?",
            "const": True,
            "help": "the repo must be private (--private false: public); an existing repo of the other visibility "
            "is refused before anything is uploaded",
        },
    )
    revision: str | None = field(default=None, metadata={"help": "branch to commit to (created if needed)"})
    commit_message: str = "Upload Vaswani Transformer"
    license: str = "apache-2.0"
    dry_run: bool = field(default=False, metadata={"help": "build and validate the folder, upload nothing"})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty --repo_folder publish did not build"})


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(PublishArguments).parse_args_into_dataclasses(argv)
    with input_errors_as_messages():
        result = publish(
            args.run_dir,
            args.repo_id,
            repo_folder=args.repo_folder,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            license=args.license,
            dry_run=args.dry_run,
            overwrite=args.overwrite,
        )
    print(f"Repo folder built and checked: {result}" if args.dry_run else f"Published: {result}")


if __name__ == "__main__":
    main()

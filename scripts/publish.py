"""Publish a trained model to the Hugging Face Hub (or build and check the repo folder only, with --dry_run).

Thin front of the `vaswani-publish` command (vaswani_hf/cli/publish.py); see --help."""

from vaswani_hf.cli.publish import main

if __name__ == "__main__":
    main()

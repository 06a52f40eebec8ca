"""The command-line programs, one module each, installed as console commands by pyproject.toml's
[project.scripts] (`vaswani-train`, `vaswani-translate`, ...); `scripts/*.py` are thin fronts of the same `main`
functions, for `accelerate launch scripts/train.py` from a clone."""

"""The repository's benchmarks, run from a clone (`python scripts/benchmark.py ...`): the data pipeline, speed and
quality against MarianMTModel and CTranslate2, and the pipeline at WMT14 size. Not part of the installed package."""

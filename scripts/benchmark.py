"""Run a benchmark and write its figures to docs/benchmarks/{name}.json and .md.

python scripts/benchmark.py data      # preprocessing time and padding of token batches (Multi30k)
python scripts/benchmark.py speed --trained_model runs/multi30k_en_de_small   # ours vs MarianMTModel, CTranslate2
python scripts/benchmark.py quality --trained_model runs/multi30k_en_de_small # BLEU of int8 and CTranslate2
python scripts/benchmark.py translate --trained_model runs/quickstart_en_de   # Multi30k test end to end: ours
                                       # (pipeline, evaluate), Marian, CTranslate2 float32 / int8; beam 4
nice python scripts/benchmark.py scale --sizes 450000,1500000,4500000  # the data pipeline and first updates at
                                                                       # WMT14 size (a corpus made from Multi30k)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a folder of the clone, not installed

from benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    main()

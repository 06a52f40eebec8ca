"""Run a script (scripts/train.py, scripts/evaluate.py) with every `generate()` call of our model counted, so that a
test sees how many sentences each process translated.

    [accelerate launch ...] python tests/counted_generate.py COUNT_DIR SCRIPT ARGUMENTS...

Each process appends the number of rows of each generate() call to COUNT_DIR/process-<RANK>.txt, one a line, then the
script runs as it would alone. The counting is done here, by patching; the package has no test hooks.
"""

import os
import runpy
import sys
from pathlib import Path

from vaswani_hf import VaswaniForConditionalGeneration

count_dir, script = Path(sys.argv[1]), sys.argv[2]
counts = count_dir / f"process-{os.environ.get('RANK', '0')}.txt"
generate = VaswaniForConditionalGeneration.generate


def counted_generate(self, input_ids=None, *args, **kwargs):
    with counts.open("a") as f:
        f.write(f"{len(input_ids)}\n")
    return generate(self, input_ids, *args, **kwargs)


VaswaniForConditionalGeneration.generate = counted_generate
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")

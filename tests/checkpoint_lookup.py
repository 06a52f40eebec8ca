"""One process of a two-node run (one process a node, both on this machine) looking up the checkpoint to resume from
as train() does (`resumable_checkpoint`), watched so that the test sees which process moved what, and when.

    RANK=R WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=P \
        python tests/checkpoint_lookup.py OUTPUT_DIR SIGNAL_DIR RESULT_FILE

Both processes are their node's main process; process 0 saves checkpoints. Process 0 moves a folder aside only once
process 1 has started looking at the checkpoints or is waiting at a barrier, so that a process 1 that does not wait
for process 0 is caught looking before process 0 is done, on any machine. RESULT_FILE gets (JSON) the checkpoint
found, the folders this process moved, and for process 1 whether process 0 was done when it looked. The processes
are watched from here, by patching; the package has no test hooks.
"""

import json
import sys
import time
from pathlib import Path

import torch.distributed
from accelerate import PartialState

import vaswani_hf.checkpoints as checkpoints
from vaswani_hf.arguments import VaswaniTrainingArguments

output_dir, signals, result_file = map(Path, sys.argv[1:4])
arguments = VaswaniTrainingArguments(output_dir=str(output_dir), use_cpu=True, report_to="none")
state = PartialState()
state.wait_for_everyone()  # both processes are set up before anything is watched
rank = state.process_index
result = {"world_size": state.num_processes, "local_main": state.is_local_main_process, "moved": []}
set_aside, last_complete_checkpoint, checkpoint_folders = (
    checkpoints.set_aside,
    checkpoints.last_complete_checkpoint,
    checkpoints.checkpoint_folders,
)
barrier = torch.distributed.barrier


def watched_set_aside(folder):
    while rank == 0 and not ((signals / "1-looking").exists() or (signals / "1-waiting").exists()):
        time.sleep(0.01)  # poll interval only: what is waited for is process 1's state
    result["moved"].append(folder.name)
    return set_aside(folder)


def watched_last_complete_checkpoint(*args, **kwargs):
    try:
        return last_complete_checkpoint(*args, **kwargs)
    finally:
        if rank == 0:
            (signals / "0-done").touch()


def watched_checkpoint_folders(folder):
    if rank == 1 and "0_done_when_1_looked" not in result:
        result["0_done_when_1_looked"] = (signals / "0-done").exists()
        (signals / "1-looking").touch()
    return checkpoint_folders(folder)


def watched_barrier(*args, **kwargs):
    if rank == 1:
        (signals / "1-waiting").touch()
    return barrier(*args, **kwargs)


checkpoints.set_aside = watched_set_aside
checkpoints.last_complete_checkpoint = watched_last_complete_checkpoint
checkpoints.checkpoint_folders = watched_checkpoint_folders
torch.distributed.barrier = watched_barrier
found = checkpoints.resumable_checkpoint(output_dir, arguments)
result["found"] = found.name if found else None
result_file.write_text(json.dumps(result))

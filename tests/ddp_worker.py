"""One torchrun process of tests/test_ddp.py: scripts' main() with each rank's outputs kept apart.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py \
        DUMP '[["name", "02_dcgan", [flags...], fake_size], ...]'

The jobs run one after the other in the same processes (one start-up of torch for all), each
with its own size of --dataset fake. Job NAME runs in DUMP/NAME/rank<r>/, so a relative --out
lands there and the test sees which process wrote what; after its main() returns (or raises
a UserError, whose message is then the status), the parameters of the models the script wrapped
and the process group's backend go to DUMP/NAME/rank<r>.pt, so the test can compare the
processes' copies, with the iterations the process ran. In the job named "nan_on_rank1", rank 1
alone logs a NaN loss;
in "signal_on_rank1", rank 1 alone has a Ctrl-C during its iteration 3. The first
job sets the process group's backend for all (Gloo on the CPU, NCCL on CUDA): one torchrun start
runs jobs of one kind of device.
"""
import importlib
import json
import os
import sys

import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402

dump, jobs = sys.argv[1], json.loads(sys.argv[2])
rank = int(os.environ["RANK"])
torch.set_num_threads(1)  # two processes on a 2-core machine
common.plot_losses = lambda *args: False  # no job looks at losses.png (matplotlib: 0.6 s to load)

wrapped = []
parallel = common.Run.parallel
common.Run.parallel = lambda self, model: wrapped.append(parallel(self, model)) or wrapped[-1]

for name, script, argv, common.FAKE_SIZE in jobs:
    wrapped.clear()
    here = os.path.join(dump, name, f"rank{rank}")
    os.makedirs(here, exist_ok=True)
    os.chdir(here)
    append = common.Run.append
    if name == "nan_on_rank1" and rank == 1:  # the losses differ between processes
        common.Run.append = lambda self, **v: append(self, **{k: x * float("nan") for k, x in v.items()})
    if name == "signal_on_rank1" and rank == 1:
        common.Run.append = lambda self, **v: setattr(self, "signal", self.signal or (
            self.iters == 3 and "Ctrl-C")) or append(self, **v)
    try:
        status = importlib.import_module(script).main(argv)
    except common.UserError as e:
        status = str(e)
    common.Run.append = append
    torch.save({"status": status, "types": [type(m).__name__ for m in wrapped],
                "backend": dist.get_backend(), "iters": common._RUN and common._RUN.iters,
                "params": [{k: v.detach().cpu() for k, v in common.unwrap(m).named_parameters()}
                           for m in wrapped]},
               os.path.join(dump, name, f"rank{rank}.pt"))
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # everything is written: skip the interpreter's 1 s of tearing torch down

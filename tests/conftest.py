import os
import sys
from pathlib import Path

import pytest
import torch

# Tests import their helpers as `tests.helpers`, also from subprocesses they start.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

# Under pytest-xdist (`make test` runs one worker per core) each worker, and every process a
# test starts, computes on one thread, so the workers do not oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(2)

# Overrides that make any config a seconds-long CPU job.
TINY = ["data=synthetic", "data.dataset.train_size=128", "data.dataset.val_size=64", "data.dataset.image_size=16",
        "data.batch_size=32", "trainer.device=cpu", "logger=none"]


@pytest.fixture
def tiny_cfg(tmp_path):
    from learnsparse.core.config_dir import compose

    def make(*overrides: str):
        return compose([*TINY, f"paths.output_dir={tmp_path / 'run'}", f"paths.log_dir={tmp_path}",
                        f"paths.data_dir={tmp_path / 'data'}", *overrides])

    return make

"""Old module paths that pickles written before the move into `rllib_lamo.experiments` name.

MLflow pickles the `policy` model's class, Tune pickles its callbacks and the trainable: a
pickle names a class by module path, so these loads go through the old paths exactly as an
already-logged model or an old experiment's `--resume` does.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from rllib_lamo.checkpoints import OfflineRestoreMixin
from rllib_lamo.experiments.policy_model import LaMoPolicyModel
from rllib_lamo.experiments.progress import ProgressTable
from rllib_lamo.experiments.tracking import LaMoMLflowCallback


def _pickled_reference(module: str, name: str) -> bytes:
    """A pickle that names a class by ``module.name``, as pickles from before the move do."""
    return f"c{module}\n{name}\n.".encode()


@pytest.mark.parametrize(
    ("old_module", "name", "moved_to"),
    [
        ("rllib_lamo.tracking", "LaMoPolicyModel", LaMoPolicyModel),
        ("rllib_lamo.tracking", "LaMoMLflowCallback", LaMoMLflowCallback),
        ("rllib_lamo.progress", "ProgressTable", ProgressTable),
        ("rllib_lamo.experiment", "OfflineRestoreMixin", OfflineRestoreMixin),
    ],
)
def test_old_pickles_load_the_moved_classes(old_module: str, name: str, moved_to: type) -> None:
    assert pickle.loads(_pickled_reference(old_module, name)) is moved_to


def test_an_old_pickled_progress_table_unpickles_and_works() -> None:
    """A whole instance pickled under the old path, as Tune stores it in tuner.pkl."""
    table = ProgressTable(show_checkpoints=True)
    old_style = pickle.dumps(table, protocol=0).replace(
        b"rllib_lamo.experiments.progress", b"rllib_lamo.progress"
    )
    assert b"rllib_lamo.progress\nProgressTable" in old_style
    restored = pickle.loads(old_style)
    assert isinstance(restored, ProgressTable) and restored.show_checkpoints


@pytest.mark.parametrize("old_module", ["rllib_lamo.cli", "rllib_lamo.report"])
def test_old_console_script_entry_points_still_run(old_module: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", old_module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "usage:" in completed.stdout

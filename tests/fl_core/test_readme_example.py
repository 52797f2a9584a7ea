"""The README's wrap-your-loop example runs as written (on digits)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from fl_core import build_model, federate
from fl_core.data import load_digits_data


def test_readme_example_runs():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    block = block.replace("fed.rounds(20)", "fed.rounds(2)")
    train, test, shape, classes = load_digits_data()
    fd = federate(train, test, num_clients=20, input_shape=shape, num_classes=classes)
    printed = []
    env = {
        "torch": torch,
        "model": build_model("logreg", shape, classes),
        "client_datasets": fd.clients,
        "test_dataset": test,
        "print": lambda *a: printed.append(a),
    }
    exec(compile(block, "README.md", "exec"), env)
    assert [p[0] for p in printed] == [1, 2]
    assert 0.0 <= printed[-1][1]["accuracy"] <= 1.0

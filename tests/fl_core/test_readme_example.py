"""The README's Python examples run as written (on digits), with objects the test defines."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from fl_core import build_model, federate
from fl_core.data import load_digits_data

README = Path(__file__).resolve().parents[2] / "README.md"


def _block(section: str, index: int = 0) -> str:
    text = README.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], re.S)
    return blocks[index]


def test_readme_wrap_your_loop_example_runs():
    block = _block("Wrap your own training loop").replace("fed.rounds(20)", "fed.rounds(2)")
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


def test_readme_task_module_and_bring_your_own_model_example_run(tmp_path, monkeypatch):
    from dp.ledger import inspect_ledger
    from fl_core.evaluation import make_evaluator

    task_src = _block("Bring your own model", 0)
    ns: dict = {}
    exec(compile(task_src, "README-task.py", "exec"), ns)
    model = ns["make_model"]()
    train, test, shape, classes = load_digits_data()
    fd = federate(train, test, num_clients=40, input_shape=shape, num_classes=classes)
    monkeypatch.chdir(tmp_path)
    block = _block("Bring your own model", 1).replace("rounds=20", "rounds=2")
    printed = []
    env = {
        "model": model,
        "train_fn": ns["train_fn"],
        "client_datasets": fd.clients,
        "evaluate": make_evaluator(test),
        "print": lambda *a: printed.append(a),
    }
    exec(compile(block, "README.md", "exec"), env)
    assert [p[0] for p in printed if not p[1]] == [1, 2]
    meta = inspect_ledger(tmp_path / "runs" / "eps.jsonl").meta
    assert meta["model_class"] == f"{type(model).__module__}.Net"

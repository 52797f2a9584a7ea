"""A tiny round loop for the SIGKILL test: append a ledger record, then publish a "model".

Usage: python ledger_sigkill_writer.py LEDGER MODEL EPSILONS_JSON ROUNDS

Each round: append the round's event to the ledger (fsync'd), then atomically
publish the model checkpoint (write a temporary file, fsync, rename, fsync the
directory) carrying the round number and the ledger head hash. On start it resumes:
if the ledger holds a round the model does not (killed between the ledger fsync and
the publish), that round was charged but never applied; the next model records it
under "skipped". Prints "ready" once it is about to run rounds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from dp.events import DPMode, Mechanism, RoundEvent, Sampling
from dp.ledger import Ledger


def event(r: int) -> RoundEvent:
    return RoundEvent(round=r, mode=DPMode.CENTRAL, mechanism=Mechanism.GAUSSIAN,
                      l2_sensitivity=1.0, noise_variance=1.0, clip_norm=1.0,
                      sampling=Sampling.POISSON, sampling_rate=0.05, population=1000,
                      cohort=50, survivors=48, dim=4)


def publish(model: Path, state: dict) -> None:
    tmp = model.with_name(model.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, model)
    dfd = os.open(model.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def main() -> None:
    ledger_path, model_path, eps_path, rounds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    # Optional pause per round: a "training" step, so that kills land mid-run on a fast machine.
    pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    eps = json.loads(Path(eps_path).read_text())
    state = json.loads(model_path.read_text()) if model_path.exists() else {
        "round": 0, "head": None, "applied": 0, "skipped": [], "weights": 0}
    led = Ledger.open(ledger_path, create_meta={"test": "sigkill"}, accountant="rdp")
    if state["head"] is None:
        state["head"] = led.records[0].prev_hash if led.records else led.head_hash
    # Rounds charged in the ledger after the published model were never applied.
    for rec in led.records:
        if rec.round > state["round"] and rec.round not in state["skipped"]:
            state["skipped"].append(rec.round)
    print("ready", flush=True)
    for r in range(led.last_round + 1, rounds + 1):
        led.append(event(r), epsilon=eps[r - 1], delta=1e-5)  # durable before publishing
        state = {**state, "round": r, "head": led.head_hash, "applied": state["applied"] + 1,
                 "weights": state["weights"] + r}
        publish(model_path, state)
        if pause:
            time.sleep(pause)
    led.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()

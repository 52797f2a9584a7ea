"""A run's folder (``--out DIR``): run description, atomic checkpoints bound to the ledger, per-round metrics, model.

Layout of ``DIR``:

``run.json``
    The run configuration and its description (the ledger header); written once.
``checkpoint.pt``
    After every committed round (and every aborted attempt): the global model, the server
    optimizer's momentum, the round number, the abort counters that key the next
    attempt's randomness, the adaptive clip, each client's record-level accountant, torch's
    global RNG state, and the ledger head hash it is bound to. Written atomically (temp file,
    fsync, rename, fsync of the folder), so it is always the old or the new one.
``metrics.jsonl``
    One JSON object per attempt: ``round``, ``attempt``, ``status`` (committed, skipped,
    aborted), ``accuracy``, ``loss`` (and any other key ``evaluate`` returned),
    ``epsilon``, ``delta``, ``record_epsilon``, ``cohort``, ``survivors``, ``dropouts``,
    ``bytes_up``, ``bytes_down`` (per cohort member), ``wall_s``, ``reason``.
``model.pt``
    ``state_dict`` of the final model (also written when a run is interrupted).
``summary.json``
    The run's JSON summary (what ``--json`` prints).
``ledger.jsonl``
    The epsilon ledger, unless ``--ledger`` names another path.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_core.errors import CheckpointError

__all__ = ["RunDir", "atomic_write", "restore_federation", "federation_state"]

FORMAT = "privagg-checkpoint"
VERSION = 1


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def federation_state(fed: Any) -> dict[str, Any]:
    """Everything needed to continue ``fed`` exactly where its last committed round left it."""
    ledger = fed.accounting.ledger
    velocity = fed.optimizer.velocity
    record = fed.record_dp
    privacy_state = getattr(fed.privacy, "state_dict", None)
    return {
        "format": FORMAT,
        "version": VERSION,
        "round": int(fed.round),
        "attempts": {str(k): int(v) for k, v in fed.attempts.items()},
        "model": {k: v.detach().cpu().clone() for k, v in fed.model.state_dict().items()},
        "velocity": None if velocity is None else torch.from_numpy(np.array(velocity, dtype=np.float64)),
        "privacy": privacy_state() if privacy_state is not None else {},
        "record_dp": _record_state(record),
        "record_max": float(getattr(fed, "_record_max", 0.0)),
        "last_epsilon": fed._last_epsilon,
        "torch_rng": torch.get_rng_state(),
        "ledger_head": getattr(ledger, "head_hash", None) if ledger is not None else None,
        "ledger_rounds": len(ledger.records) if ledger is not None else 0,
    }


def _record_state(record: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if record is not None:
        for c in record.clients():
            calls, hist = record.client_state(c)
            out[str(c)] = [calls, [list(h) for h in hist]]
    return out


def restore_federation(fed: Any, state: Mapping[str, Any]) -> None:
    """Put ``state`` (from :func:`federation_state`) back into a freshly built ``fed``.

    Raises:
        CheckpointError: the checkpoint's ledger head is not the ledger's (rounds were charged
            after it, or the ledger was replaced), or its model does not fit ``fed``'s.
    """
    ledger = fed.accounting.ledger
    want = state.get("ledger_head")
    if ledger is not None:
        have = getattr(ledger, "head_hash", None)
        # A checkpoint taken before any round was charged fits any ledger holding no round
        # (a failed or interrupted start leaves no header-only ledger behind, so it is recreated).
        empty = int(state.get("ledger_rounds", 0)) == 0 and not ledger.records
        if want != have and not empty:
            raise CheckpointError(
                f"the checkpoint of round {state['round']} is bound to ledger head {str(want)[:16]}... "
                f"({state.get('ledger_rounds')} rounds) but the ledger {ledger.path} has head {str(have)[:16]}... "
                f"({len(ledger.records)} rounds): the ledger holds rounds this checkpoint does not (the process "
                "was killed between charging a round and saving it) or it is another ledger. Resuming would "
                "lose or double-count privacy spending, so it is refused; start a new run with a new ledger"
            )
    elif int(state.get("ledger_rounds", 0)) > 0:
        raise CheckpointError("the checkpoint is bound to a ledger but this run opened none")
    try:
        fed.model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"the checkpoint's model does not fit this run's model: {exc}") from exc
    v = state.get("velocity")
    fed.optimizer.velocity = None if v is None else v.numpy().astype(np.float64)
    fed.round = int(state["round"])
    fed.attempts = {int(k): int(v) for k, v in dict(state.get("attempts", {})).items()}
    load = getattr(fed.privacy, "load_state_dict", None)
    if load is not None:
        load(dict(state.get("privacy", {})))
    if fed.record_dp is not None:
        for c, (calls, hist) in dict(state.get("record_dp", {})).items():
            fed.record_dp.restore_client(int(c), int(calls), [tuple(h) for h in hist])
    fed._record_max = float(state.get("record_max", 0.0))
    if state.get("last_epsilon") is not None:
        fed._last_epsilon = float(state["last_epsilon"])
    rng = state.get("torch_rng")
    if rng is not None:
        torch.set_rng_state(rng)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def round_record(res: Any) -> dict[str, Any]:
    """One line of ``metrics.jsonl`` for a round attempt."""
    status = "aborted" if res.aborted else ("skipped" if res.skipped else "committed")
    out: dict[str, Any] = {"round": res.round, "attempt": res.attempt, "status": status}
    out.update({k: _jsonable(v) for k, v in res.metrics.items()})
    out.update(
        {
            "epsilon": _jsonable(res.epsilon),
            "delta": res.delta,
            "record_epsilon": res.record_epsilon,
            "cohort": len(res.cohort),
            "survivors": len(res.survivors),
            "dropouts": {str(c): why for c, why in res.dropouts.items()},
            "bytes_up": round(res.bytes_up_per_client, 1),
            "bytes_down": round(res.bytes_down_per_client, 1),
            "clipped_fraction": _jsonable(res.clipped_fraction),
            "wall_s": round(res.wall_s, 4),
            "ledger_head": res.ledger_head,
            "reason": res.reason,
        }
    )
    return out


class RunDir:
    """The ``--out`` folder of one run (see the module docstring for its files)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    run_file = property(lambda self: self.path / "run.json")
    checkpoint_file = property(lambda self: self.path / "checkpoint.pt")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    model_file = property(lambda self: self.path / "model.pt")
    summary_file = property(lambda self: self.path / "summary.json")
    default_ledger = property(lambda self: self.path / "ledger.jsonl")

    # -- the run ------------------------------------------------------------------

    def check_new(self) -> None:
        """Raise CheckpointError unless a new run can start here (a folder or nothing, holding no run)."""
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointError(f"--out {self.path} is a file, not a folder")
        if self.run_file.exists():
            raise CheckpointError(
                f"--out {self.path} already holds a run: continue it with --resume {self.path}, "
                "or give another --out folder"
            )

    def create(self, config: Mapping[str, Any], description: Mapping[str, Any]) -> None:
        """Start a new run in this folder.

        Raises:
            CheckpointError: the path is a file, or the folder already holds a run.
        """
        self.check_new()
        self.path.mkdir(parents=True, exist_ok=True)
        body = {"format": "privagg-run", "version": VERSION, "config": dict(config), "description": dict(description)}
        atomic_write(self.run_file, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())

    def read_run(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config, description) of the run stored here.

        Raises:
            CheckpointError: no run here, or an unreadable/foreign run.json.
        """
        if not self.run_file.is_file():
            raise CheckpointError(
                f"{self.path} holds no privagg run (no run.json): --resume takes the --out folder of an earlier run"
            )
        try:
            body = json.loads(self.run_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read {self.run_file}: {exc}") from exc
        if not isinstance(body, dict) or body.get("format") != "privagg-run" or body.get("version") != VERSION:
            raise CheckpointError(f"{self.run_file} is not a privagg run file of version {VERSION}")
        return dict(body["config"]), dict(body["description"])

    # -- checkpoints ----------------------------------------------------------------

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(dict(state), buf)
        atomic_write(self.checkpoint_file, buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, or None if the run committed no round yet.

        Raises:
            CheckpointError: unreadable or not a privagg checkpoint.
        """
        if not self.checkpoint_file.exists():
            return None
        try:
            # weights_only: a checkpoint is data; loading one never runs code from the file.
            state = torch.load(self.checkpoint_file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot read checkpoint {self.checkpoint_file}: {exc}") from exc
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != VERSION:
            raise CheckpointError(f"{self.checkpoint_file} is not a privagg checkpoint of version {VERSION}")
        return state

    # -- metrics, model, summary ---------------------------------------------------

    def append_metrics(self, res: Any) -> None:
        with self.metrics_file.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(round_record(res)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        out = []
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line (killed mid-write)
        return out

    def keep_metrics_through(self, state: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        """Drop metrics lines the checkpoint does not cover (attempts after it); return the kept ones."""
        last = 0 if state is None else int(state["round"])
        attempts = {} if state is None else {int(k): int(v) for k, v in dict(state.get("attempts", {})).items()}
        keep = [
            m
            for m in self.read_metrics()
            if m["round"] <= last or (m["round"] == last + 1 and m["status"] == "aborted"
                                      and m["attempt"] < attempts.get(last + 1, 0))
        ]
        atomic_write(self.metrics_file, "".join(json.dumps(m) + "\n" for m in keep).encode())
        return keep

    def save_model(self, model: torch.nn.Module) -> None:
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
        atomic_write(self.model_file, buf.getvalue())

    def save_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write(self.summary_file, (json.dumps(summary, indent=2, default=str) + "\n").encode())

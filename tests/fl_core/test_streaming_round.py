"""The in-process round streams: each client's input is produced when its session asks for it.

Two properties: (1) however large the cohort, no more than one encoded input is alive at a
time (counted with weak references to every vector the client pipeline returns); (2) the
streamed round computes exactly what the round that produced every input up front computed
(the slow reference below: the loop before streaming), bit for bit: model, ledger events,
survivors, dropouts, the clients' own records.
"""

from __future__ import annotations

import math
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dp.errors import ClientBudgetExceededError
from dp.randomness import SeededRandomSource
from fl_core.config import RunConfig
from fl_core.errors import ClientTrainingError, UpdateError
from fl_core.federation import Federation, RoundResult
from fl_core.pipeline import NoPrivacy
from fl_core.privacy import build_privacy
from fl_core.sampling import Sampler
from secagg import RingVector, SecAggError, run_round

# min-survivors is half the cohort so that simulated dropouts do not abort: the warning that
# such a run carries more noise than it needs is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::fl_core.privacy.NoiseSizingWarning")


class UserModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class UserTrainer:
    """The user's own loop; it fails for the clients named in ``broken`` (their rounds are dropouts)."""

    def __init__(self, broken: frozenset[int] = frozenset()) -> None:
        self.broken = broken
        self.order: list[int] = []

    def __call__(self, model: nn.Module, data: Any) -> None:
        x, y = data.tensors
        client = int(x[0, 0].item())
        self.order.append(client)
        if client in self.broken:
            raise OSError("disk full")
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()


def _data(n: int) -> list[TensorDataset]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(1, n + 1):
        x = torch.randn(5, 6, generator=g)
        x[:, 0] = float(i)  # the client's id, so the trainer can tell whose data it got
        out.append(TensorDataset(x, torch.randint(0, 3, (5,), generator=g)))
    return out


def _federation(
    tmp_path: Path, name: str, *, n: int, k: int, dp: str = "distributed", broken: frozenset[int] = frozenset(),
    dropout: float = 0.0, secure_sum: str = "masking",
) -> Federation:
    torch.manual_seed(0)
    model = UserModel()
    sampler = Sampler.fixed_size(n, k)
    cfg = RunConfig(dp=dp, clients=n, per_round=k, noise_multiplier=1.0, clip=1.0, seed=7, secure_sum=secure_sum,
                    client_max_epsilon=math.inf, min_survivors=max(2, k // 2))  # fmt: skip
    kwargs: dict[str, Any]
    if dp == "none":
        kwargs = {"privacy": NoPrivacy(clip_norm=1.0)}
    else:
        kwargs, _ = build_privacy(cfg.replace(ledger=str(tmp_path / f"{name}.jsonl")), sampler, model)
    return Federation(
        model, UserTrainer(broken), _data(n), rng=SeededRandomSource(7), sampler=sampler, secure_sum=secure_sum,
        dropout=dropout, bits=None, **kwargs,
    )  # fmt: skip


def eager_round(fed: Federation) -> RoundResult:
    """Slow reference: the round loop before streaming. Every member's input is produced up front,
    in cohort order (a failed one is a client that never starts), then the secure sum runs."""
    start = fed.begin_round()
    r, members = start.round, start.cohort.members
    global_vec = fed.codec.flatten(fed.model)
    inputs: dict[int, RingVector] = {}
    failed: dict[int, str] = {}
    refused: list[int] = []
    clipped = saturated = 0
    for c in members:
        try:
            vec, clip = fed.client_contribution(c, r, global_vec, fed.source.get(c))
        except ClientBudgetExceededError:
            refused.append(c)
            continue
        except (ClientTrainingError, UpdateError) as exc:
            failed[c] = str(exc)
            continue
        inputs[c] = vec
        clipped += int(clip.clipped)
        saturated += clip.saturated
    stages = fed.dropouts(members, r)
    for c in failed:
        inputs[c] = fed.plan.ring.zeros(fed.plan.dim)
        stages[c] = 0
    outcome = run_round(
        fed.secure_sum, dict(sorted(inputs.items())), round_id=r, rng_for=lambda c: fed.secagg_rng(c, r),
        stages_completed=stages,
    )  # fmt: skip
    return fed.finish_round(
        start, outcome, global_vec, clipped=clipped, saturated=saturated, failed=failed, refused=tuple(refused)
    )


def _track_encoded_inputs(fed: Federation) -> dict[str, int]:
    """Count, through weak references, the encoded inputs the client pipeline returned that are still alive."""
    alive: list[weakref.ref[Any]] = []
    seen = {"peak": 0, "made": 0}
    run = fed.client_pipeline.run

    def counting(delta: Any, rng: Any) -> tuple[RingVector, Any]:
        vec, clip = run(delta, rng)
        alive[:] = [w for w in alive if w() is not None]
        alive.append(weakref.ref(vec))
        seen["made"] += 1
        seen["peak"] = max(seen["peak"], len(alive))
        return vec, clip

    fed.client_pipeline.run = counting  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("secure_sum", ["masking", "plain"])
@pytest.mark.parametrize("k", [4, 24])
def test_at_most_one_encoded_input_is_alive_whatever_the_cohort(tmp_path: Path, k: int, secure_sum: str) -> None:
    fed = _federation(tmp_path, f"peak-{k}", n=k + 2, k=k, dropout=0.25, secure_sum=secure_sum)
    seen = _track_encoded_inputs(fed)
    fed.fit(2)
    assert seen["made"] == 2 * k  # every member computed its input (those sent away too), one at a time
    assert seen["peak"] == 1


def test_streamed_rounds_equal_the_rounds_that_computed_every_input_first(tmp_path: Path) -> None:
    """Masking, distributed Skellam noise, simulated dropouts, a client whose train_fn fails and the
    clients' own records: the streamed rounds and the eager reference agree bit for bit."""
    runs = {}
    for name in ("stream", "eager"):
        fed = _federation(tmp_path, name, n=14, k=10, broken=frozenset({3, 9}), dropout=0.2)
        results = [fed.run_round() if name == "stream" else eager_round(fed) for _ in range(3)]
        runs[name] = (fed, results)
    (fs, rs), (fe, re_) = runs["stream"], runs["eager"]
    assert np.array_equal(fs.codec.flatten(fs.model), fe.codec.flatten(fe.model))
    assert fs.train_fn.order == fe.train_fn.order  # the same clients trained, in the same order
    for a, b in zip(rs, re_, strict=True):
        assert (a.round, a.cohort, a.survivors, dict(a.dropouts), a.refused) == (
            b.round, b.cohort, b.survivors, dict(b.dropouts), b.refused,
        )  # fmt: skip
        assert (a.epsilon, a.clipped_fraction, a.saturated_coordinates, a.event) == (
            b.epsilon, b.clipped_fraction, b.saturated_coordinates, b.event,
        )  # fmt: skip
    assert any(r.dropouts for r in rs) and any(len(r.survivors) < len(r.cohort) - len(r.dropouts) for r in rs)
    guard_s, guard_e = fs.client_guard, fe.client_guard
    assert {c: [x.event for x in rec.charges] for c, rec in guard_s.records.items()} == {
        c: [x.event for x in rec.charges] for c, rec in guard_e.records.items()
    }


def test_a_failed_input_is_a_dropout_of_the_input_stage_and_costs_no_secure_sum_cpu(tmp_path: Path) -> None:
    """The failing client took part in key setup, then sent nothing: the server unmasked without it.
    Producing inputs is charged to train/clip/noise/encode, not to the clients' secure-sum CPU."""
    fed = _federation(tmp_path, "fail", n=6, k=6, broken=frozenset({2}))
    seen: dict[str, Any] = {}
    transport_run = fed.transport.run

    def spy(*args: Any, **kw: Any) -> Any:
        seen["outcome"] = out = transport_run(*args, **kw)
        return out

    fed.transport.run = spy  # type: ignore[method-assign]
    res = fed.run_round()
    outcome = seen["outcome"]
    assert 2 in outcome.withdrawn and 2 not in res.survivors and set(res.dropouts) == {2}
    assert outcome.bytes_up[2] > 0  # it advertised keys and dealt shares before training failed
    assert all(v > 0 for v in outcome.input_cpu_s.values())
    assert sum(outcome.client_cpu_s.values()) > 0 and res.cpu_s["train"] > 0


def test_a_secure_sum_failure_while_inputs_stream_leaves_everything_unchanged(tmp_path: Path) -> None:
    """A round whose secure sum fails half-way (some inputs produced and sent, others not) changes
    neither the model nor the ledger, as any aborted round."""
    fed = _federation(tmp_path, "sabotage", n=6, k=6)
    before = fed.codec.flatten(fed.model).copy()
    calls = {"n": 0}
    real = fed._contribute

    def third_breaks(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise SecAggError("the secure sum broke while client 3's input was being produced")
        return real(*args)

    fed._contribute = third_breaks  # type: ignore[method-assign]
    with pytest.raises(Exception, match="secure sum failed"):
        fed.run_round()
    assert np.array_equal(fed.codec.flatten(fed.model), before) and fed.round == 0 and not fed.events
    assert fed.aborts and fed.aborts[-1].aborted

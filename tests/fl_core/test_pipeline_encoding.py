"""The pipeline's ring choice, rotation and conditional rounding, as a user's run sees them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dp.calibration import DPConfig, distributed_noise
from dp.events import DPMode
from dp.randomness import SeededRandomSource
from fl_core.federation import Federation
from fl_core.params import ParamCodec
from fl_core.pipeline import MAX_INFLATION, ClientPipeline, NoPrivacy, plan_for
from fl_core.privacy import ROUNDING_BETA, DPPolicy
from fl_core.sampling import Sampler
from secagg import FixedPointEncoder


def _policy(dim: int, cohort: int = 50, population: int = 1000) -> tuple[DPPolicy, Sampler]:
    sampler = Sampler.fixed_size(population, cohort)
    cfg = DPConfig(
        mode=DPMode.DISTRIBUTED,
        noise_multiplier=1.0,
        clip_norm=1.0,
        expected_cohort=cohort,
        min_survivors=cohort,
        rounding_beta=ROUNDING_BETA,
    )
    return DPPolicy(cfg, sampler=sampler, dim=dim, delta=1e-5), sampler


def test_default_fashion_mlp_setting_gets_a_16_bit_ring_within_1_percent_inflation() -> None:
    dim = 101_770  # the Fashion-MNIST MLP
    policy, sampler = _policy(dim)
    plan = plan_for(policy, sampler, dim, None)
    assert plan.ring.bits == 16 and plan.rotation is not None
    assert plan.worst_case() <= plan.limit
    inflation = distributed_noise(policy.config, scale=plan.scale, dim=dim).inflation
    assert 0 < inflation <= MAX_INFLATION
    # The same run on an explicit 32-bit ring: the plan the 16-bit one is compared against.
    assert plan_for(policy, sampler, dim, 32).ring.bits == 32


def test_no_dp_keeps_the_32_bit_ring_without_rotation() -> None:
    plan = plan_for(NoPrivacy(), Sampler.full(10), 1000, None)
    assert plan.ring.bits == 32 and plan.rotation is None


class _CentralWithoutNoise(NoPrivacy):
    """Central mode's pipeline (rotation on) with the noise left out, to check the arithmetic."""

    @property
    def mode(self) -> str:
        return "central"


def _data(n: int) -> list[TensorDataset]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(12, 20, generator=g)
        out.append(TensorDataset(x, (x[:, 0] > 0).long()))
    return out


def _train(model: nn.Module, data: TensorDataset) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = data.tensors
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_rotated_round_gives_the_fedavg_mean() -> None:
    """Rotate on the clients, sum, rotate back on the server: the model moves by the mean of the
    clients' clipped updates, within a few quanta (a user's own model and loop)."""
    torch.manual_seed(0)
    data = _data(6)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 2))
    policy = _CentralWithoutNoise(clip_norm=10.0)
    fed = Federation(model, _train, data, rng=SeededRandomSource(4), secure_sum="masking", privacy=policy, bits=None)
    assert fed.plan.rotation is not None
    codec = ParamCodec(model)
    before = codec.flatten(model).astype(np.float64)
    deltas = []
    for d in data:
        m = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 2))
        codec.unflatten_into(m, before)
        _train(m, d)
        deltas.append(policy.clip(codec.flatten(m).astype(np.float64) - before).vector)
    fed.run_round()
    after = codec.flatten(fed.model).astype(np.float64)
    np.testing.assert_allclose(after - before, np.mean(deltas, axis=0), atol=4 * fed.plan.quantum + 1e-6)


def test_signs_adversarial_to_the_update_cannot_raise_its_sensitivity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The attacker's best case for the rotation: an update built so that the public signs map all of
    its norm into one coordinate (as if the signs had been chosen against it). The client clamps
    that coordinate (and reports it), and its rounded encoding stays within the L2 bound the
    accountant charges: the rotation's signs cannot weaken privacy, only cost utility."""
    dim = 4096
    policy, sampler = _policy(dim, cohort=20, population=100)
    plan = plan_for(policy, sampler, dim, None)
    rot = plan.rotation
    assert rot is not None and rot.windows == ((0, dim),)
    from scipy.linalg import hadamard

    # x = D H e_0 / sqrt(m): then H D x / sqrt(m) = e_0, the whole unit norm in one coordinate.
    x = rot._signs[0] * hadamard(dim)[:, 0] / math.sqrt(dim)
    assert np.abs(rot.forward(x)).max() == pytest.approx(1.0)
    monkeypatch.setattr(policy, "client_integer_noise", lambda *a, **k: None)
    pipe = ClientPipeline(policy, FixedPointEncoder(plan), sampler)
    ring_vec, clip = pipe.run(x.astype(np.float32), SeededRandomSource("attack"))
    assert clip.saturated == 1  # the spike was clamped, and reported
    ints = plan.ring.to_signed(ring_vec).astype(np.float64)
    charged = distributed_noise(policy.config, scale=plan.scale, dim=dim).l2_sensitivity
    assert math.sqrt(float(ints @ ints)) <= charged


def reference_client_pipeline(pipe: ClientPipeline, delta: np.ndarray, rng: SeededRandomSource) -> np.ndarray:
    """Slow, obviously correct reference: each step on its own, as the pipeline was first written
    (rotate, re-clip with l2_clip, clamp, encode into the ring, then the integer noise encoded
    into the ring and added there)."""
    from fl_core.pipeline import l2_clip

    plan, policy = pipe.encoder.plan, pipe.policy
    v = policy.local_noise(policy.clip(delta).vector, rng.spawn("local-noise"))
    if plan.rotation is not None:
        v = l2_clip(plan.rotation.forward(v), policy.clip_norm).vector
    v = np.clip(v, -plan.bound, plan.bound)
    n = v.shape[0]
    ring_vec = pipe.encoder.encode(
        v, rng.spawn("rounding"), max_norm=policy.rounding_norm_bound(plan.scale, n), norm_coordinates=n
    )
    noise = policy.client_integer_noise(n, plan.scale, pipe.sampler, rng.spawn("integer-noise"))
    if noise is not None:
        pipe.encoder.ring.add_into(ring_vec, pipe.encoder.encode_integers(noise))
    return ring_vec


@pytest.mark.parametrize("dim", [3000, 101_770])
@pytest.mark.parametrize("bits", [None, 32])
def test_client_pipeline_equals_the_step_by_step_reference(dim: int, bits: int | None) -> None:
    """The pipeline re-clips the rotated vector in place and adds the integer noise before mapping
    into the ring once; the output is bit for bit the step-by-step one, on the same randomness."""
    policy, sampler = _policy(dim)
    pipe = ClientPipeline(policy, FixedPointEncoder(plan_for(policy, sampler, dim, bits)), sampler)
    g = np.random.default_rng(dim)
    for scale in (0.01, 3.0):  # inside the clip, and clipped
        delta = (g.standard_normal(dim) * scale / math.sqrt(dim)).astype(np.float32)
        fast, _ = pipe.run(delta, SeededRandomSource(f"pipe/{dim}/{scale}"))
        slow = reference_client_pipeline(pipe, delta, SeededRandomSource(f"pipe/{dim}/{scale}"))
        assert fast.dtype == slow.dtype and np.array_equal(fast, slow)

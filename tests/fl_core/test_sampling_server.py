from __future__ import annotations

import numpy as np
import pytest

from dp.randomness import SeededRandomSource
from fl_core.errors import ConfigError, UpdateError
from fl_core.sampling import Sampler, SamplingScheme
from fl_core.server import ServerOptimizer


def test_poisson_rate_and_record():
    s = Sampler.poisson(1000, 0.05)
    sizes = [len(s.sample(SeededRandomSource(i)).members) for i in range(200)]
    assert abs(np.mean(sizes) - 50) < 2.5
    c = s.sample(SeededRandomSource(0))
    assert c.scheme is SamplingScheme.POISSON and c.rate == 0.05 and c.population == 1000
    assert s.max_cohort() >= max(sizes)


def test_fixed_size_is_uniform_without_replacement():
    s = Sampler.fixed_size(10, 3)
    counts = np.zeros(11)
    for i in range(3000):
        m = s.sample(SeededRandomSource(i)).members
        assert len(set(m)) == 3 and all(1 <= x <= 10 for x in m)
        counts[list(m)] += 1
    assert np.all(np.abs(counts[1:] - 900) < 120)
    assert s.scheme is SamplingScheme.FIXED_SIZE and s.rate == 0.3


def test_full_and_errors():
    assert Sampler.fixed_size(4, 4).scheme is SamplingScheme.FULL
    assert Sampler.full(3).sample(SeededRandomSource(0)).members == (1, 2, 3)
    for bad in (
        lambda: Sampler.poisson(10, 0),
        lambda: Sampler.poisson(10, 1.5),
        lambda: Sampler.fixed_size(10, 11),
        lambda: Sampler.full(0),
    ):
        with pytest.raises(ConfigError):
            bad()


def test_server_optimizer_fedavg_and_momentum():
    w = np.zeros(3, dtype=np.float32)
    opt = ServerOptimizer(lr=0.5, momentum=0.9)
    new, v = opt.step(w, np.ones(3))
    assert np.allclose(new, 0.5)
    assert opt.velocity is None  # pure until committed
    opt.commit(v)
    new2, v2 = opt.step(new, np.ones(3))
    assert np.allclose(v2, 1.9) and np.allclose(new2, 0.5 + 0.95)
    with pytest.raises(UpdateError, match="NaN"):
        opt.step(w, np.array([0, np.inf, 0]))
    with pytest.raises(UpdateError, match="shape"):
        opt.step(w, np.ones(2))
    with pytest.raises(ConfigError):
        ServerOptimizer(lr=0)
    with pytest.raises(ConfigError):
        ServerOptimizer(momentum=1.0)

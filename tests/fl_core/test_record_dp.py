"""Tests of fl_core.record_dp: Opacus DP-SGD inside a user's train_fn, per-client accounting."""

from __future__ import annotations

import warnings

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dp.randomness import SeededRandomSource
from fl_core.errors import ConfigError
from fl_core.record_dp import GradSampleMode, RecordDP, RecordDPConfig, make_private

torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
warnings.filterwarnings("ignore", message=".*Optimal order.*")


def tiny_data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)


def user_train_fn(model: nn.Module, data: TensorDataset) -> None:
    """A user's ordinary loop with the one added make_private line."""
    loader = DataLoader(data, batch_size=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model, opt, loader = make_private(model, opt, loader)
    for _ in range(3):
        for x, y in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()


def ghost_train_fn(model: nn.Module, data: TensorDataset) -> None:
    loader = DataLoader(data, batch_size=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model, opt, crit, loader = make_private(model, opt, loader, criterion=nn.CrossEntropyLoss())
    for _ in range(3):
        for x, y in loader:
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()


def accuracy(model: nn.Module, data: TensorDataset) -> float:
    with torch.no_grad():
        x, y = data.tensors
        return float((model(x).argmax(1) == y).float().mean())


def test_model_trains_and_epsilon_matches_opacus_accountant() -> None:
    cfg = RecordDPConfig(noise_multiplier=0.8, max_grad_norm=1.0, delta=1e-5)
    rdp = RecordDP(cfg, rng=SeededRandomSource(1))
    train = rdp.wrap(user_train_fn)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    data = {1: tiny_data(64, 1), 2: tiny_data(48, 2)}
    before = accuracy(model, data[1])
    eps_hist = []
    for _round in range(3):
        for cid, d in data.items():
            with rdp.client(cid):
                train(model, d)
        eps_hist.append(rdp.epsilon(1))
    assert accuracy(model, data[1]) > max(before, 0.75)
    assert eps_hist[0] < eps_hist[1] < eps_hist[2]
    # Opacus' own accountant for the same steps: client 1 has 64 records, batch 16 -> q = 1/4,
    # 4 steps per epoch, 3 epochs per round, 3 rounds.
    ref = RDPAccountant()
    for _ in range(3 * 3 * 4):
        ref.step(noise_multiplier=0.8, sample_rate=16 / 64)
    assert rdp.steps(1) == 36
    assert rdp.epsilon(1) == pytest.approx(ref.get_epsilon(delta=1e-5), rel=1e-9)
    ref2 = RDPAccountant()
    for _ in range(3 * 3 * 3):
        ref2.step(noise_multiplier=0.8, sample_rate=1 / 3)
    assert rdp.epsilon(2) == pytest.approx(ref2.get_epsilon(delta=1e-5), rel=1e-9)
    rep = rdp.report()["record_level"]
    assert rep["epsilon_max"] == max(rdp.epsilon(1), rdp.epsilon(2))
    assert rep["per_client"]["1"]["steps"] == 36 and rep["poisson"] is True


def test_ghost_clipping_trains_and_accounts() -> None:
    cfg = RecordDPConfig(noise_multiplier=0.8, max_grad_norm=1.0, grad_sample_mode=GradSampleMode.GHOST)
    rdp = RecordDP(cfg, rng=SeededRandomSource(2))
    train = rdp.wrap(ghost_train_fn)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    d = tiny_data(64, 3)
    for _ in range(4):
        with rdp.client("a"):
            train(model, d)
    assert accuracy(model, d) > 0.7
    assert rdp.steps("a") == 4 * 3 * 4 and rdp.epsilon("a") > 0


def test_client_key_defaults_to_data_identity_and_batch_size_override() -> None:
    cfg = RecordDPConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=8)
    rdp = RecordDP(cfg, rng=SeededRandomSource(3))
    train = rdp.wrap(user_train_fn)
    d = tiny_data(32, 4)
    train(nn.Linear(4, 2), d)
    train(nn.Linear(4, 2), d)
    assert rdp.steps(id(d)) == 2 * 3 * 4  # batch 8 over 32 records: 4 steps per epoch
    assert rdp.epsilon("never-trained") == 0.0 and rdp.steps("never-trained") == 0


def test_state_dict_round_trip_keeps_epsilon() -> None:
    cfg = RecordDPConfig(noise_multiplier=1.0, max_grad_norm=1.0)
    rdp = RecordDP(cfg, rng=SeededRandomSource(4))
    with rdp.client("c"):
        rdp.wrap(user_train_fn)(nn.Linear(4, 2), tiny_data(32, 5))
    other = RecordDP(cfg)
    other.load_state_dict(rdp.state_dict())
    assert other.epsilon("c") == pytest.approx(rdp.epsilon("c"))


def test_client_state_moves_a_client_to_another_process_exactly() -> None:
    """Two trainings in one object == one training, a move through client_state, a second training."""
    cfg = RecordDPConfig(noise_multiplier=1.0, max_grad_norm=1.0)

    def train(rdp: RecordDP, m: nn.Module) -> None:
        with rdp.client(7):
            rdp.wrap(user_train_fn)(m, tiny_data(32, 8))

    torch.manual_seed(0)
    one, m1 = RecordDP(cfg, rng=SeededRandomSource(9)), nn.Linear(4, 2)
    train(one, m1)
    train(one, m1)
    torch.manual_seed(0)
    first, m2 = RecordDP(cfg, rng=SeededRandomSource(9)), nn.Linear(4, 2)
    train(first, m2)
    second = RecordDP(cfg, rng=SeededRandomSource(9))
    calls, history = first.client_state(7)
    assert calls == 1 and history and second.client_state(7) == (0, ())
    second.restore_client(7, calls, history)
    train(second, m2)
    assert second.client_state(7) == one.client_state(7)
    assert second.epsilon(7) == one.epsilon(7)
    assert torch.equal(m1.weight, m2.weight)  # the generators continue where the first process stopped
    with pytest.raises(ConfigError, match="cannot be negative"):
        second.restore_client(7, -1, history)


def test_same_seed_same_training() -> None:
    cfg = RecordDPConfig(noise_multiplier=1.0, max_grad_norm=1.0)
    outs = []
    for _ in range(2):
        rdp = RecordDP(cfg, rng=SeededRandomSource(5))
        torch.manual_seed(0)
        m = nn.Linear(4, 2)
        with rdp.client(1):
            rdp.wrap(user_train_fn)(m, tiny_data(32, 6))
        outs.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(outs[0], outs[1])


def test_make_private_outside_wrapper_is_refused() -> None:
    m = nn.Linear(4, 2)
    with pytest.raises(ConfigError, match="inside a train_fn"):
        make_private(m, torch.optim.SGD(m.parameters(), lr=0.1), DataLoader(tiny_data(8), batch_size=4))


def test_train_fn_that_skips_make_private_is_refused() -> None:
    rdp = RecordDP(RecordDPConfig(noise_multiplier=1.0, max_grad_norm=1.0))

    def plain(model: nn.Module, data: TensorDataset) -> None:
        return None

    with pytest.raises(ConfigError, match="without record-level DP"):
        rdp.wrap(plain)(nn.Linear(4, 2), tiny_data(8))


def test_ghost_without_criterion_is_refused() -> None:
    rdp = RecordDP(RecordDPConfig(noise_multiplier=1.0, max_grad_norm=1.0,
                                  grad_sample_mode=GradSampleMode.GHOST))
    with pytest.raises(ConfigError, match="criterion"):
        rdp.wrap(user_train_fn)(nn.Linear(4, 2), tiny_data(8))


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"noise_multiplier": 0.0, "max_grad_norm": 1.0}, "record_noise_multiplier"),
        ({"noise_multiplier": 1.0, "max_grad_norm": float("inf")}, "max_grad_norm"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1.0}, "delta"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "batch_size": 0}, "batch_size"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "gdp"}, "record_accountant"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "grad_sample_mode": "ghost"}, "grad_sample_mode"),
    ],
)
def test_config_errors_name_the_option(kwargs: dict, option: str) -> None:
    with pytest.raises(ConfigError) as ei:
        RecordDPConfig(**kwargs)
    assert ei.value.option == option


def test_privagg_run_reports_record_level_epsilon_beside_client_level(tmp_path) -> None:
    from fl_core.config import RunConfig
    from fl_core.runner import execute

    cfg = RunConfig(dp="central", secure_sum="plain", clients=20, per_round=5, rounds=2, seed=1,
                    record_noise_multiplier=1.0, ledger=str(tmp_path / "l.jsonl"))
    out = execute(cfg).to_json()
    rec = out["record_level"]
    assert out["epsilon"] > 0 and rec["epsilon_max"] > 0 and rec["clients_trained"] >= 5
    assert rec["epsilon_median"] <= rec["epsilon_max"] and rec["delta"] == cfg.delta

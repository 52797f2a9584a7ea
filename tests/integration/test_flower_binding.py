"""A Flower server that tells different nodes of one round different terms, tested as the attacker.

Each node checks the terms it is sent against its own floor, then clips and sizes its noise
share for them. The server can still send *different* acceptable terms to different nodes:
a large clip to a victim and small clips (so small noise shares) to the others, or a smaller
noise multiplier to the others. The victim's update then sits in a sum whose noise was sized
for someone else's terms. Each node now binds its masks to the digests of the terms it
checked and used (fl_core.binding): these tests play the scripted server (nodes driven
without processes, as in test_flower_policy.py) and check that such a round releases no
usable sum, and, with the binding switched off (the code before it), that the attack works.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
from scipy import stats
from test_flower import _flower_task_identity, _opening, _small_cfg  # noqa: F401 (autouse fixture)

pytestmark = [
    pytest.mark.flower,
    pytest.mark.skipif(
        importlib.util.find_spec("flwr") is None, reason="flwr is not installed: pip install 'privagg[flower]'"
    ),
]

NODES = 6
VICTIM = 1


def _cfg(**kw: Any) -> Any:
    base: dict[str, Any] = dict(
        dp="distributed", noise_multiplier=1.0, clip=1.0, seed=None, clients=NODES, per_round=NODES
    )
    base.update(kw)
    return _small_cfg(**base)


@pytest.fixture
def noise_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float, np.ndarray]]:
    """Every noise share a node draws: (the clip it sized it for, its scale, the integer share)."""
    from fl_core.privacy import DPPolicy

    log: list[tuple[float, float, np.ndarray]] = []
    real = DPPolicy.client_integer_noise

    def spy(self: Any, dim: int, scale: float, sampler: Any, rng: Any) -> Any:
        out = real(self, dim, scale, sampler, rng)
        log.append((float(self.clip_norm), float(scale), np.asarray(out).copy()))
        return out

    monkeypatch.setattr(DPPolicy, "client_integer_noise", spy)
    return log


def _without_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code before the binding: every node binds the same digests whatever terms it used."""
    import fl_core.binding

    monkeypatch.setattr(fl_core.binding, "setup_digest", lambda fed: bytes(32))
    monkeypatch.setattr(fl_core.binding, "round_digest", lambda setup, clip: bytes(32))


Tamper = Callable[[Any], list[Any]]


def _align_terms(m: Any) -> list[Any]:
    """The attacker makes every masked input claim one digest, so that its own session's check passes."""
    from secagg.masking import Stage, wire

    if m.stage != Stage.MASKED_INPUT.value:
        return [m]
    p, end = m.payload, wire.MASKED_INPUT_HEADER_BYTES
    return [dataclasses.replace(m, payload=p[: end - 32] + bytes(32) + p[end:])]


def _scripted_round(
    configs: Mapping[int, Any], clips: Mapping[int, float], *, tamper: Tamper | None = None
) -> tuple[Any, dict[int, Any], dict[int, str], Any]:
    """Open one round on every node, each with the configuration and clip the server chose for it, and run
    the masking stages through a server session that checks no terms. Returns (server session, each node's
    kept session, node -> why it refused a stage, the victim's federation as the server built it)."""
    from fl_core.transport.flower.client import handle_round, handle_stage
    from fl_core.transport.flower.codec import StagePacket
    from fl_core.transport.flower.sessions import secure_sum_for
    from secagg import RemoteProtocolError
    from secagg.masking import TermsBinding

    ids = sorted(configs)
    states: dict[int, Any] = {}
    refused: dict[int, str] = {}
    to_server: list[Any] = []
    fed_v = None
    for c in ids:
        fed, packet = _opening(configs[c], c)
        fed_v = fed if c == VICTIM else fed_v
        fields = {**packet.fields, "clip": clips.get(c, packet.fields["clip"])}
        reply, states[c] = handle_round(StagePacket(1, "train", (), fields), {"partition-id": c - 1})
        to_server.extend(reply.messages)
    s = states[VICTIM]
    # The attacker's session: the victim's secure-sum parameters, and no expected terms digest.
    spec = secure_sum_for(configs[VICTIM], s.ring_bits, s.dim, s.max_clients, s.min_survivors)
    server = spec.bound(TermsBinding(bytes(32), None)).server(ids, 1)
    to_clients: list[Any] = []
    for m in to_server:
        for d in tamper(m) if tamper is not None else [m]:
            to_clients.extend(server.receive(d))
    while not server.done:
        batch, to_clients = to_clients, []
        if not batch:
            to_clients = list(server.close_stage())
            continue
        for c in ids:
            mine = tuple(m for m in batch if m.recipient == c)
            if not mine or c in refused:
                continue
            try:
                reply, states[c] = handle_stage(StagePacket(1, mine[0].stage, mine), states[c])
            except RemoteProtocolError as exc:
                refused[c] = f"{mine[0].stage}: {exc}"
                continue
            for m in reply.messages:
                for d in tamper(m) if tamper is not None else [m]:
                    to_clients.extend(server.receive(d))
    return server, states, refused, fed_v


def _plain_sum(states: Mapping[int, Any]) -> np.ndarray:
    """What the nodes' inputs sum to (the oracle: each node's encoded, noised input)."""
    from secagg import RingSpec

    ring = RingSpec(states[VICTIM].ring_bits)
    xs = [np.frombuffer(st.x, dtype=ring.dtype) for st in states.values()]
    return ring.sum(xs, states[VICTIM].dim)


def _effective_noise_multiplier(log: list[tuple[float, float, np.ndarray]], dim: int) -> float:
    """Std of the summed noise shares (float units, model coordinates only) over the victim's clip."""
    victim_clip = max(clip for clip, _, _ in log)
    total = sum(noise[:dim].astype(np.float64) / scale for _, scale, noise in log)
    return float(np.std(total)) / victim_clip


# -- (1) the clip: a large clip to the victim, small clips to the others ----------------------------


def _clip_attack(tamper: Tamper | None = None) -> tuple[Any, dict[int, Any], dict[int, str], Any]:
    cfg = _cfg(adaptive_clip=True)  # nodes accept any clip in [C/8, 8C], the adaptive clip's range
    clips = {c: (8.0 if c == VICTIM else 0.125) for c in range(1, NODES + 1)}
    return _scripted_round({c: cfg for c in clips}, clips, tamper=tamper)


def test_control_without_the_binding_a_split_clip_dilutes_the_victims_noise(
    noise_log: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack on the code before the binding: the round releases the exact sum, and the noise in it is
    sized for the others' clip 1/8, not the victim's 8: the victim's effective noise multiplier drops by
    about sqrt(6) (by up to the clip ratio, 64, with enough nodes)."""
    from fl_core.runner import build_federation

    _without_binding(monkeypatch)
    server, states, refused, fed = _clip_attack()
    assert not refused
    assert np.array_equal(server.result(), _plain_sum(states))  # the attacker has the sum, victim included
    dim = fed.dim
    z_split = _effective_noise_multiplier(noise_log, dim)
    # The same noise shares as an honest round would draw: every node at the victim's clip.
    honest, _, _ = build_federation(_cfg(adaptive_clip=True), open_ledger=False)
    honest.privacy.use_clip(8.0)
    shares = [
        (8.0, honest.plan.scale, honest.privacy.client_integer_noise(
            honest.plan.dim, honest.plan.scale, honest.sampler, honest.rng.spawn(f"n{c}")))
        for c in range(NODES)
    ]
    z_honest = _effective_noise_multiplier(shares, dim)
    z = honest.privacy.config.update_noise_multiplier
    assert z_honest == pytest.approx(z, rel=0.1)
    expected = z * np.sqrt((1 + (NODES - 1) / 64**2) / NODES)  # the victim's share plus five tiny ones
    assert z_split == pytest.approx(expected, rel=0.1)
    assert z_split < z / 2.3  # sqrt(6) = 2.45


def test_with_the_binding_a_split_clip_releases_nothing_about_the_victim(noise_log: list[Any]) -> None:
    """Each node bound its masks to the clip it was told. The server's own session, which checks that every
    survivor's masked input names the same terms, aborts; a server that rewrites those names to pass its
    check gets the sum plus pads it cannot remove: a uniformly random vector, not the sum."""
    from secagg import RemoteProtocolError, RingSpec

    server, states, refused, _ = _clip_attack()
    assert not refused  # the clip is not known when the shares are dealt: the masks carry it
    with pytest.raises(RemoteProtocolError, match="different round terms"):
        server.result()
    server, states, refused, _ = _clip_attack(tamper=_align_terms)
    released = server.result()
    ring = RingSpec(states[VICTIM].ring_bits)
    residual = ring.reduce(released - _plain_sum(states))
    assert np.count_nonzero(residual) > 0.99 * residual.size
    counts = np.bincount(np.frombuffer(residual.tobytes(), dtype=np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4  # the pad is uniform: the release says nothing of the inputs


def test_nodes_told_the_same_clip_still_sum_exactly(noise_log: list[Any]) -> None:
    """The honest path: every node at the same (adapted) clip, bound alike, gives the exact sum."""
    cfg = _cfg(adaptive_clip=True)
    server, states, refused, _ = _scripted_round({c: cfg for c in range(1, NODES + 1)}, dict.fromkeys(range(1, 7), 3.0))
    assert not refused
    assert np.array_equal(server.result(), _plain_sum(states))
    assert len({st.binding for st in states.values()}) == 1


# -- (2) the noise multiplier and the survivors a share is sized for -------------------------------


def _config_split(**victim: Any) -> tuple[dict[int, Any], Any]:
    return {c: _cfg(**victim) if c == VICTIM else _cfg() for c in range(1, NODES + 1)}, _cfg(**victim)


def test_control_without_the_binding_a_split_noise_multiplier_dilutes_the_victims_noise(
    noise_log: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The victim is told noise multiplier 1.6 (its record charges that), the others 0.8 (their own floor
    accepts it); the encoding is the same for both, so the sum decodes, and the victim's effective noise
    multiplier is about 1.0, not 1.6."""
    _without_binding(monkeypatch)
    configs, _ = _config_split(noise_multiplier=1.6)
    configs = {c: (cfg if c == VICTIM else _cfg(noise_multiplier=0.8)) for c, cfg in configs.items()}
    server, states, refused, fed = _scripted_round(configs, {})
    assert not refused and len({(st.ring_bits, st.dim) for st in states.values()}) == 1
    assert len({scale for _, scale, _ in noise_log}) == 1
    assert np.array_equal(server.result(), _plain_sum(states))
    z_split = _effective_noise_multiplier(noise_log, fed.dim)
    assert z_split == pytest.approx(np.sqrt((1.6**2 + (NODES - 1) * 0.8**2) / NODES), rel=0.1)
    assert z_split < 0.7 * 1.6


def test_with_the_binding_a_split_noise_multiplier_is_refused_at_the_shares() -> None:
    """The noise multiplier is a term fixed before the shares are dealt: the victim's shares are sealed under
    other terms than its neighbours', so every node refuses the masked-input request (blaming the server)
    and no masked input, hence no sum, exists."""
    from secagg import SecAggError

    configs, _ = _config_split(noise_multiplier=1.6)
    configs = {c: (cfg if c == VICTIM else _cfg(noise_multiplier=0.8)) for c, cfg in configs.items()}
    server, _states, refused, _ = _scripted_round(configs, {})
    assert set(refused) == set(configs)
    assert all(why.startswith("masked-input") and "other round terms" in why for why in refused.values())
    with pytest.raises(SecAggError):
        server.result()


def test_a_split_min_survivors_is_refused_at_the_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    """The victim is told its noise share is one of 3 (min-survivors 3), the others one of 6. (Each node's
    own session refuses to unmask with fewer than its min-survivors, so this split cannot push the victim's
    noise below what it assumed; it does put shares sized for different terms into one sum, which no ledger
    event describes.) With the binding: refused at the shares, no sum. Without: released."""
    configs = {c: (_cfg(min_survivors=3) if c == VICTIM else _cfg(min_survivors=6)) for c in range(1, NODES + 1)}
    server, states, refused, _ = _scripted_round(configs, {})
    assert set(refused) == set(configs) and all("other round terms" in why for why in refused.values())
    _without_binding(monkeypatch)
    server, states, refused, _ = _scripted_round(configs, {})
    assert not refused
    assert sorted(st.min_survivors for st in states.values()) == [3] + [6] * (NODES - 1)
    assert np.array_equal(server.result(), _plain_sum(states))

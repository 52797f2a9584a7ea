"""``privagg keygen paillier`` key files, and the paillier backend built from keys made elsewhere."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dp.randomness import SeededRandomSource
from fl_core.backends import BackendRequest, build_secure_sum
from fl_core.commands.keygen import (
    PRIVATE_KEY,
    PUBLIC_KEY,
    THRESHOLD_PARAMS,
    KeygenError,
    keygen_paillier,
    share_file,
)
from secagg import RingSpec, run_round
from secagg.errors import ConfigurationError
from secagg.paillier import (
    KeyHolder,
    PaillierSecureSum,
    ThresholdDecryptor,
    load_key_share,
    load_private_key,
    load_public_key,
    load_threshold_params,
    public_key_sha256,
)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_single_key_files_are_private_and_match(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    res = keygen_paillier(out, key_bits=512, insecure_small_key_for_tests=True)
    sk = load_private_key((out / PRIVATE_KEY).read_bytes())
    pk = load_public_key((out / PUBLIC_KEY).read_bytes())
    assert sk.public_key.n == pk.n and res["public_key_sha256"] == public_key_sha256(pk)
    assert _mode(out / PRIVATE_KEY) == 0o600 and _mode(out) == 0o700
    assert res["files"] == {"private_key": str(out / PRIVATE_KEY), "public_key": str(out / PUBLIC_KEY)}
    assert (res["key_bits"], res["threshold"]) == (512, None)
    with pytest.raises(KeygenError, match="refusing to overwrite"):
        keygen_paillier(out, key_bits=512, insecure_small_key_for_tests=True)


def test_threshold_shares_decrypt_together(tmp_path: Path) -> None:
    out = tmp_path / "t"
    res = keygen_paillier(out, key_bits=512, threshold=(2, 3), insecure_small_key_for_tests=True)
    params = load_threshold_params((out / THRESHOLD_PARAMS).read_bytes())
    shares = [load_key_share((out / share_file(i)).read_bytes()) for i in (1, 2, 3)]
    assert all(_mode(out / share_file(i)) == 0o600 for i in (1, 2, 3))
    assert not (out / PRIVATE_KEY).exists() and res["threshold"] == "2/3"
    assert res["public_key_sha256"] == public_key_sha256(load_public_key((out / PUBLIC_KEY).read_bytes()))
    rng = SeededRandomSource("keygen test")
    ss = PaillierSecureSum(
        RingSpec(16),
        5,
        public_key=params.public_key,
        decryptors=[ThresholdDecryptor(s, rng=rng.spawn(str(s.index))) for s in shares[1:]],
        threshold_params=params,
        max_clients=4,
        insecure_small_key_for_tests=True,
    )
    xs = {c: np.full(5, c, dtype=np.uint16) for c in (1, 2)}
    assert np.array_equal(run_round(ss, xs, round_id=1, rng_for=lambda c: rng.spawn(f"c{c}")).total, np.full(5, 3))


def test_keygen_refuses_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="below the 2048-bit minimum"):
        keygen_paillier(tmp_path / "a", key_bits=1024)
    (tmp_path / "file").write_text("x")
    with pytest.raises(KeygenError, match="is not a directory"):
        keygen_paillier(tmp_path / "file", key_bits=512, insecure_small_key_for_tests=True)
    assert not (tmp_path / "a").exists()  # nothing written on refusal


def test_keygen_command_prints_the_fingerprint_and_exits_2_on_bad_input(tmp_path: Path) -> None:
    from fl_core.cli import app

    runner = CliRunner()
    args = ["keygen", "paillier", "--out", str(tmp_path / "k"), "--key-bits", "512", "--insecure-small-key-for-tests"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["public_key_sha256"] == public_key_sha256(load_public_key((tmp_path / "k" / PUBLIC_KEY).read_bytes()))
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    bad = runner.invoke(app, ["keygen", "paillier", "--out", str(tmp_path / "x"), "--threshold", "3/2"])
    assert bad.exit_code == 2 and "1 <= t <= m" in bad.output


def test_backend_built_from_keys_made_elsewhere_generates_no_key(tmp_path: Path) -> None:
    from fl_core.backend_paillier import keys_from

    keygen_paillier(tmp_path, key_bits=512, insecure_small_key_for_tests=True)
    sk = load_private_key((tmp_path / PRIVATE_KEY).read_bytes())
    seen = []

    def factory(req: BackendRequest) -> PaillierSecureSum:
        seen.append(req)
        return PaillierSecureSum(
            req.ring,
            req.dim,
            public_key=sk.public_key,
            key_holder=KeyHolder(sk),
            max_clients=req.max_clients,
            min_survivors=int(req.options.get("min_survivors") or 1),
            insecure_small_key_for_tests=True,
        )

    req = BackendRequest(RingSpec(16), 3, 4, SeededRandomSource("x"), {"min_survivors": 2})
    with keys_from(factory):
        ss = build_secure_sum("paillier", req)
    assert seen == [req] and ss.public_key.n == sk.public_key.n and ss.min_survivors == 2
    # Outside the block the builder generates its own key again (refusing a small one unless asked).
    small = build_secure_sum(
        "paillier",
        BackendRequest(
            RingSpec(16), 3, 4, SeededRandomSource("x"), {"key_bits": 512, "insecure_small_key_for_tests": True}
        ),
    )
    assert small.public_key.n != sk.public_key.n

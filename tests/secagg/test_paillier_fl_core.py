"""The paillier backend in the fl_core registry, and ``privagg bench paillier``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from dp.randomness import SeededRandomSource
from fl_core.backend_paillier import build_paillier, parse_threshold
from fl_core.backends import BackendRequest, available_backends, build_secure_sum
from fl_core.commands import bench_paillier
from fl_core.errors import ConfigError
from secagg import RingSpec, run_round
from secagg.paillier import EncryptionMode, PaillierSecureSum

SMALL = {"key_bits": 512, "insecure_small_key_for_tests": True}


def request(**options):
    return BackendRequest(RingSpec(32), 50, 10, SeededRandomSource("req"), options)


def test_registered_and_buildable_by_name():
    assert "paillier" in available_backends()
    single = build_secure_sum("paillier", request(verify_decryption=True, **SMALL))
    assert single.verify_decryption is True  # type: ignore[attr-defined]
    ss = build_secure_sum("paillier", request(graph="complete", threshold="2/3", mode="standard", **SMALL))
    assert isinstance(ss, PaillierSecureSum)
    assert ss.mode is EncryptionMode.STANDARD and ss.threshold_params is not None
    assert ss.threshold_params.threshold == 2 and ss.max_clients == 10
    ring = RingSpec(32)
    inputs = {c: np.full(50, c, dtype=np.uint32) for c in (1, 2, 3)}
    out = run_round(ss, inputs, round_id=1, rng_for=lambda c: SeededRandomSource(c))
    assert np.array_equal(out.total, ring.sum(inputs.values(), 50))


def test_default_key_is_2048_bits():
    ss = build_paillier(BackendRequest(RingSpec(16), 10, 5, SeededRandomSource(1)))
    assert ss.public_key.bits == 2048  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["2", "a/b", "3/2", "0/2", (1, 2, 3), 5])
def test_bad_threshold_option(value):
    with pytest.raises(ConfigError) as ei:
        parse_threshold(value)
    assert ei.value.option == "threshold"


def test_threshold_forms():
    assert parse_threshold(None) is None and parse_threshold("") is None
    assert parse_threshold("2/5") == (2, 5) and parse_threshold((1, 1)) == (1, 1)


def test_bad_mode_and_small_key_are_config_errors():
    with pytest.raises(ConfigError) as ei:
        build_paillier(request(mode="fast", **SMALL))
    assert ei.value.option == "mode"
    with pytest.raises(ConfigError, match="2048") as ei:
        build_paillier(request(key_bits=1024))
    assert ei.value.option == "secure_sum"


def test_bench_function_reports_every_figure():
    out = bench_paillier.bench_paillier(
        clients=2, dim=300, key_bits=512, insecure_small_key_for_tests=True, precompute=True
    )
    for key in ("encrypt_cpu_s_per_client", "sum_cpu_s", "decrypt_cpu_s", "bytes_per_client", "verified", "machine"):
        assert key in out
    assert out["verified"] is True and out["error"] is None
    assert out["bytes_per_client"] > 300 * 64 / out["slots_per_ciphertext"]
    assert out["precompute_cpu_s_per_client"] is not None


def test_bench_verified_decryption_flag():
    res = CliRunner().invoke(
        _cli(),
        [
            "bench",
            "paillier",
            "--dim",
            "50",
            "--key-bits",
            "256",
            "--insecure-small-key-for-tests",
            "--verify-decryption",
            "--json",
        ],
    )
    assert res.exit_code == 0 and json.loads(res.output)["verify_decryption"] is True


def test_bench_threshold_function():
    out = bench_paillier.bench_paillier(
        clients=2, dim=100, key_bits=256, threshold=(2, 3), insecure_small_key_for_tests=True
    )
    assert out["verified"] is True and out["threshold"] == "2/3" and len(out["key_holder_cpu_s"]) == 2


def _cli():
    app = typer.Typer()
    bench = typer.Typer()
    app.add_typer(bench, name="bench")
    bench_paillier.register(app, bench)
    return app


def test_cli_prints_one_json_object():
    res = CliRunner().invoke(
        _cli(),
        [
            "bench",
            "paillier",
            "--clients",
            "2",
            "--dim",
            "100",
            "--key-bits",
            "512",
            "--insecure-small-key-for-tests",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["verified"] is True and obj["key_bits"] == 512


def test_cli_refuses_small_key_and_bad_threshold():
    res = CliRunner().invoke(_cli(), ["bench", "paillier", "--key-bits", "1024", "--dim", "10", "--json"])
    assert res.exit_code == 2 and "2048" in res.output
    res = CliRunner().invoke(_cli(), ["bench", "paillier", "--threshold", "5/2", "--dim", "10"])
    assert res.exit_code == 2


def test_cli_human_output():
    res = CliRunner().invoke(
        _cli(),
        ["bench", "paillier", "--clients", "1", "--dim", "10", "--key-bits", "256", "--insecure-small-key-for-tests"],
    )
    assert res.exit_code == 0 and "verified: True" in res.output


def test_cli_exit_code_1_when_the_sum_is_not_verified(monkeypatch):
    real = bench_paillier.bench_paillier

    def broken(**kw):
        out = real(**kw)
        out["verified"] = False
        return out

    monkeypatch.setattr(bench_paillier, "bench_paillier", broken)
    res = CliRunner().invoke(
        _cli(), ["bench", "paillier", "--dim", "10", "--key-bits", "256", "--insecure-small-key-for-tests", "--json"]
    )
    assert res.exit_code == 1 and '"verified": false' in res.output

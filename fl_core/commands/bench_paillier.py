"""``privagg bench paillier``: one packed-Paillier round, metered per phase, printed as JSON."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

__all__ = ["register", "bench_paillier"]


def machine_info() -> dict[str, Any]:
    """The machine and the library versions these figures depend on."""
    from fl_core.machine import machine_info as _info

    return _info(("gmpy2", "phe"))


def bench_paillier(
    *,
    clients: int,
    dim: int,
    key_bits: int = 2048,
    value_bits: int = 16,
    max_clients: int = 100,
    threshold: tuple[int, int] | None = None,
    mode: str = "djn",
    window: int = 10,
    precompute: bool = False,
    verify_decryption: bool = False,
    seed: int = 0,
    insecure_small_key_for_tests: bool = False,
) -> dict[str, Any]:
    """Run one round of ``clients`` x ``dim`` and return the measurements (CPU seconds, bytes).

    ``encrypt_cpu_s_per_client`` is the online client cost (pack, encrypt, serialize);
    with ``precompute`` the encryptions of zero are made beforehand and reported as
    ``precompute_cpu_s_per_client``. The DJN table is built once per process and
    reported as ``table_build_cpu_s``.
    """
    import time

    import numpy as np

    from dp.randomness import SeededRandomSource
    from secagg import RingSpec, run_round
    from secagg.paillier import EncryptionMode, PaillierSecureSum

    rng = SeededRandomSource(seed)
    ring = RingSpec(value_bits)
    t0 = time.perf_counter()
    ss = PaillierSecureSum.generate(
        ring,
        dim,
        rng=rng.spawn("keys"),
        key_bits=key_bits,
        max_clients=max_clients,
        threshold=threshold,
        mode=EncryptionMode(mode),
        window=window,
        verify_decryption=verify_decryption,
        insecure_small_key_for_tests=insecure_small_key_for_tests,
    )
    keygen_s = time.perf_counter() - t0
    table_s = 0.0
    if ss.mode is EncryptionMode.DJN:
        t = time.process_time()
        _ = ss.encryptor.table
        table_s = time.process_time() - t
    data = rng.spawn("inputs")
    inputs = {}
    for c in range(1, clients + 1):
        raw = data.uint64(dim) & np.uint64(ring.mask)
        inputs[c] = raw.astype(ring.dtype)
    expected = ring.sum(inputs.values(), dim)

    sessions: list[Any] = []

    class _Recorder:
        """Proxy that keeps the server session so its decryption meters can be read."""

        name = ss.name
        ring = ss.ring
        dim = ss.dim

        def client(self, me: int, round_id: int, r: Any) -> Any:
            return ss.client(me, round_id, r)

        def server(self, cohort: Any, round_id: int) -> Any:
            s = ss.server(cohort, round_id)
            sessions.append(s)
            return s

    precompute_s: list[float] = []
    if precompute:  # offline phase, outside the metered round (the pool is consumed in order)
        for c in inputs:
            t = time.process_time()
            ss.precompute(ss.plan.plaintexts, rng.spawn(f"client {c}").spawn("offline"))
            precompute_s.append(time.process_time() - t)

    def rng_for(c: int) -> Any:
        return rng.spawn(f"client {c}")

    outcome = run_round(_Recorder(), inputs, round_id=1, rng_for=rng_for)
    server = sessions[0]
    verified = outcome.error is None and outcome.total is not None and bool(np.array_equal(outcome.total, expected))
    enc = [outcome.client_cpu_s[c] for c in inputs]
    up = [outcome.bytes_up[c] for c in inputs]
    pk = ss.public_key
    result: dict[str, Any] = {
        "benchmark": "paillier",
        "clients": clients,
        "dim": dim,
        "key_bits": key_bits,
        "value_bits": value_bits,
        "max_clients": max_clients,
        "threshold": f"{threshold[0]}/{threshold[1]}" if threshold else None,
        "mode": mode,
        "window": window,
        "verify_decryption": verify_decryption,
        "slot_bits": ss.plan.slot_bits,
        "slots_per_ciphertext": ss.plan.slots,
        "ciphertexts_per_client": ss.plan.plaintexts,
        "ciphertext_bytes": pk.ciphertext_bytes,
        "keygen_wall_s": keygen_s,
        "table_build_cpu_s": table_s,
        "precompute_cpu_s_per_client": (sum(precompute_s) / len(precompute_s)) if precompute_s else None,
        "encrypt_cpu_s_per_client": sum(enc) / len(enc),
        "encrypt_cpu_s_max_client": max(enc),
        "sum_cpu_s": outcome.server_cpu_s - server.decrypt_cpu_s,
        "decrypt_cpu_s": server.decrypt_cpu_s,
        "key_holder_cpu_s": dict(sorted((str(k), v) for k, v in server.holder_cpu_s.items())),
        "key_holder_bytes": dict(sorted((str(k), v) for k, v in server.holder_bytes.items())),
        "bytes_per_client": sum(up) / len(up),
        "bytes_per_value": sum(up) / len(up) / dim,
        "phe_bytes_per_client_equivalent": dim * pk.ciphertext_bytes,
        "rejected_shares": sorted(server.rejected),
        "verified": verified,
        "error": None if outcome.error is None else f"{type(outcome.error).__name__}: {outcome.error}",
        "machine": machine_info(),
    }
    return result


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @bench_app.command("paillier")
    def paillier(
        clients: int = typer.Option(3, "--clients", help="Clients in the round."),
        dim: int = typer.Option(10_000, "--dim", help="Parameters per client update."),
        key_bits: int = typer.Option(2048, "--key-bits", help="Paillier modulus size (>= 2048)."),
        value_bits: int = typer.Option(16, "--value-bits", help="Ring width of each value."),
        max_clients: int = typer.Option(100, "--max-clients", help="Headroom: clients a sum may hold."),
        threshold: Optional[str] = typer.Option(None, "--threshold", help="t/m threshold decryption."),
        mode: str = typer.Option("djn", "--mode", help="djn (fast, default) or standard (r^n)."),
        window: int = typer.Option(10, "--window", help="DJN fixed-base table window in bits."),
        precompute: bool = typer.Option(False, "--precompute", help="Make encryptions of zero offline first."),
        verify_decryption: bool = typer.Option(
            False, "--verify-decryption", help="Single key holder proves each plaintext; the server checks."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed for keys and inputs (benchmarks only)."),
        insecure_small_key: bool = typer.Option(
            False, "--insecure-small-key-for-tests", help="Allow keys < 2048 bits (tests only)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Time one packed-Paillier round: encryption, homomorphic sum, decryption, upload size."""
        from fl_core.backend_paillier import parse_threshold
        from fl_core.errors import FLError
        from secagg import SecAggError

        try:
            out = bench_paillier(
                clients=clients,
                dim=dim,
                key_bits=key_bits,
                value_bits=value_bits,
                max_clients=max_clients,
                threshold=parse_threshold(threshold),
                mode=mode,
                window=window,
                precompute=precompute,
                verify_decryption=verify_decryption,
                seed=seed,
                insecure_small_key_for_tests=insecure_small_key,
            )
        except (FLError, SecAggError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if as_json:
            typer.echo(json.dumps(out, sort_keys=True))
        else:
            for k, v in out.items():
                typer.echo(f"{k}: {v}")
        if not out["verified"]:
            raise typer.Exit(1)

"""``privagg bench secagg``: whole SecAgg / SecAgg+ rounds in process, metered, printed as JSON."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

__all__ = ["DROP_STAGES", "DROP_STAGE_NEEDS", "register", "bench_secagg", "machine_info"]

DROP_STAGES = {"advertise": 1, "sharing": 2, "masked-input": 3, "consistency": 4}
"""--drop-stage name -> how many stages a dropped client completes (see secagg.simulation)."""

DROP_STAGE_NEEDS = {"consistency": "consistency-check"}
"""--drop-stage names that mean something only when the round has this stage. The consistency
check runs only with identity keys (the active variant); without them a client that completed
four stages never drops, so the option is refused rather than silently benchmarking no dropout."""


def machine_info() -> dict[str, Any]:
    """The machine and the library versions these figures depend on."""
    from fl_core.machine import machine_info as _info

    return _info(("numpy", "cryptography"))


def _peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def bench_secagg(
    *,
    clients: int,
    dim: int,
    dropout: float = 0.1,
    graph: str = "sparse",
    bits: int = 32,
    seed: int = 0,
    degree: int | None = None,
    threshold: int | None = None,
    drop_stage: str = "masked-input",
    identity_keys: bool = False,
) -> dict[str, Any]:
    """Run one masking round of ``clients`` x ``dim`` and return its measurements.

    ``round(dropout * clients)`` clients, chosen with the seed, leave after
    ``drop_stage`` (default: right after sending their masked input, so they miss
    unmasking; ``"consistency"``: right after signing the survivor list, which
    needs ``identity_keys``). CPU is
    process time per party (one core). Each client's input is produced when it sends
    its masked input and added to a running plain sum then (the check of ``verified``),
    and the server folds masked inputs in as they arrive: memory stays a few vectors of
    ``dim`` whatever ``clients`` is (``peak_rss_bytes``). ``server_floor_cpu_s`` is the measured
    cost of the unavoidable server work: one PRG expansion per mask the
    unmasking needs plus one vector addition per received input;
    ``server_unmasking_cpu_s`` is what the server spent on that same work
    (collecting the masked inputs and unmasking), ``server_cpu_s`` everything,
    including relaying keys and shares.
    """
    import time

    import numpy as np

    from dp.randomness import SeededRandomSource
    from secagg import RingSpec, run_round
    from secagg.masking import MaskingSecureSum, Stage, generate_identities
    from secagg.primitives import prg

    if drop_stage not in DROP_STAGES:
        raise ValueError(f"drop_stage must be one of {sorted(DROP_STAGES)}, got {drop_stage!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    ring = RingSpec(bits)
    root = SeededRandomSource(seed)
    ids = list(range(1, clients + 1))
    identities = signing_keys = None
    if identity_keys:
        identities, signing_keys = generate_identities(ids, root.spawn("identities"))
    ss = MaskingSecureSum(
        ring, dim, graph=graph, degree=degree, threshold=threshold, identities=identities, signing_keys=signing_keys
    )
    needed = DROP_STAGE_NEEDS.get(drop_stage)
    if needed is not None and needed not in ss.stages:
        raise ValueError(
            f"drop_stage {drop_stage!r} needs identity keys: without them the round has no {needed} stage "
            f"(stages: {', '.join(ss.stages)}); use 'masked-input' to drop clients right before unmasking"
        )
    params = ss.parameters(clients)
    # Inputs are produced on demand (each client's at its masked-input stage) and folded into a
    # running plain sum as they are made, so neither the round nor its check holds n vectors.
    expected = ring.zeros(dim)
    produced: set[int] = set()

    def make_input(c: int) -> Any:
        def produce() -> Any:
            words = root.spawn(f"input-{c}").generator().integers(0, 1 << 63, dim, dtype=np.uint64)
            v = (words & np.uint64(ring.mask)).astype(ring.dtype)
            del words
            ring.add_into(expected, v)
            produced.add(c)
            return v

        return produce

    inputs = {c: make_input(c) for c in ids}
    n_drop = round(dropout * clients)
    dropped = sorted(int(c) for c in root.spawn("dropouts").numpy_generator().choice(ids, n_drop, replace=False))
    drops = {c: DROP_STAGES[drop_stage] for c in dropped}

    servers: list[Any] = []

    class _Keep:
        """Proxy that keeps the server session so its unmasking meters can be read."""

        name = ss.name
        ring = ss.ring
        dim = ss.dim

        def client(self, me: int, round_id: int, r: Any) -> Any:
            return ss.client(me, round_id, r)

        def server(self, cohort: Any, round_id: int) -> Any:
            servers.append(ss.server(cohort, round_id))
            return servers[-1]

    outcome = run_round(
        _Keep(),
        inputs,
        round_id=1,
        rng_for=lambda c: root.spawn(f"client-{c}"),
        stages_completed=drops,
    )
    server = servers[0]
    survivors = sorted(outcome.survivors)
    # Every produced input reached the server (a client produces its input only when it sends it).
    verified = (
        outcome.error is None
        and outcome.total is not None
        and set(survivors) == produced
        and bool(np.array_equal(outcome.total, expected))
    )

    # The floor: the same number of PRG expansions and input additions, nothing else.
    acc = ring.zeros(dim)
    one = ring.zeros(dim)
    t0 = time.process_time()
    for _ in survivors:
        np.add(acc, one, out=acc)
    seeds = [(i.to_bytes(prg.SEED_BYTES, "little"), "sub") for i in range(server.unmask_prg_expansions)]
    prg.add_masks_into(acc, seeds, ring)  # type: ignore[arg-type]
    floor = time.process_time() - t0

    # What the floor covers: summing the masked inputs and removing the masks.
    unmasking = server.stage_cpu_s[Stage.MASKED_INPUT] + server.unmask_cpu_s
    client_cpu = [outcome.client_cpu_s[c] for c in ids if c in outcome.client_cpu_s]
    up = [outcome.bytes_up[c] for c in ids]
    down = [outcome.bytes_down[c] for c in ids]
    return {
        "benchmark": "secagg",
        "clients": clients,
        "dim": dim,
        "bits": bits,
        "dropout": dropout,
        "drop_stage": drop_stage,
        "dropped": len(dropped),
        "graph": params.graph.value,
        "graph_requested": graph,
        "degree": params.degree,
        "threshold": params.threshold,
        "failure_probability_bound": params.failure_probability,
        "privacy_failure_probability_bound": params.privacy_failure_probability,
        "identity_keys": identity_keys,
        "stages": list(ss.stages),
        "total_cpu_s": sum(client_cpu) + outcome.server_cpu_s,
        "server_cpu_s": outcome.server_cpu_s,
        "server_unmask_cpu_s": server.unmask_cpu_s,
        "server_stage_cpu_s": {st.value: v for st, v in server.stage_cpu_s.items()},
        "server_unmasking_cpu_s": unmasking,
        "server_floor_cpu_s": floor,
        "server_unmasking_over_floor": unmasking / floor if floor > 0 else None,
        "server_over_floor": outcome.server_cpu_s / floor if floor > 0 else None,
        "unmask_prg_expansions": server.unmask_prg_expansions,
        "client_cpu_s_median": _median(client_cpu),
        "client_cpu_s_max": max(client_cpu),
        "bytes_per_client": sum(up) / len(up),
        "bytes_per_client_max": max(up),
        "upload_bytes_per_parameter": max(up) / dim,
        "download_bytes_per_client": sum(down) / len(down),
        "survivors": len(survivors),
        "verified": verified,
        "error": None if outcome.error is None else f"{type(outcome.error).__name__}: {outcome.error}",
        "peak_rss_bytes": _peak_rss_bytes(),
        "machine": machine_info(),
    }


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @bench_app.command("secagg")
    def secagg(
        clients: int = typer.Option(100, "--clients", help="Clients in the round."),
        dim: int = typer.Option(100_000, "--dim", help="Parameters per client update."),
        dropout: float = typer.Option(0.1, "--dropout", help="Fraction of clients that drop out."),
        graph: str = typer.Option("sparse", "--graph", help="complete (SecAgg) or sparse (SecAgg+)."),
        bits: int = typer.Option(32, "--bits", help="Ring width b of Z_2^b."),
        seed: int = typer.Option(0, "--seed", help="Seed for inputs, keys and dropouts (benchmarks only)."),
        degree: Optional[int] = typer.Option(None, "--degree", help="Force the sparse degree k (even)."),
        threshold: Optional[int] = typer.Option(None, "--threshold", help="Force the Shamir threshold t."),
        drop_stage: str = typer.Option(
            "masked-input",
            "--drop-stage",
            help="When dropped clients leave (after this stage): "
            + ", ".join(f"{k} (with --identity-keys only)" if k in DROP_STAGE_NEEDS else k for k in DROP_STAGES)
            + ".",
        ),
        identity_keys: bool = typer.Option(False, "--identity-keys", help="Sign with Ed25519 identity keys."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Time one secure-aggregation round by pairwise masking: CPU per party, bytes, correctness."""
        from secagg import SecAggError

        try:
            out = bench_secagg(
                clients=clients,
                dim=dim,
                dropout=dropout,
                graph=graph,
                bits=bits,
                seed=seed,
                degree=degree,
                threshold=threshold,
                drop_stage=drop_stage,
                identity_keys=identity_keys,
            )
        except (SecAggError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        if as_json:
            typer.echo(json.dumps(out))
            return
        for key in (
            "clients",
            "dim",
            "graph",
            "degree",
            "threshold",
            "total_cpu_s",
            "server_cpu_s",
            "server_floor_cpu_s",
            "client_cpu_s_median",
            "bytes_per_client",
            "verified",
        ):
            typer.echo(f"{key:>22}: {out[key]}")
        if not out["verified"]:
            raise typer.Exit(1)

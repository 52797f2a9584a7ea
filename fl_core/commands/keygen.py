"""``privagg keygen paillier``: the key files of Paillier key holders that run apart from the server.

Writes, into a new or empty directory:

* single key holder: ``paillier-private.key`` (secret, mode 0600) and ``paillier-public.key``;
* t-of-m threshold key: ``paillier-share-I.key`` for I in 1..m (each secret, mode 0600; give
  each to its own decryptor), ``paillier-threshold.params`` and ``paillier-public.key``.

It prints JSON naming the files and the public key's SHA-256 (``public_key_sha256``), the
value client operators pin (``paillier-public-key-sha256`` in a Flower node config). The
files use :mod:`secagg.paillier.keys` (not encrypted: protect them like any private key).

Security:
    Keys come from the OS CSPRNG (there is no seed option). The threshold key is dealt by
    this process (Shoup 2000's trusted dealer): it sees every share and forgets the
    factorisation when it exits; whoever runs it must hand each share to one decryptor and
    delete the directory's copies. Private files are created with ``O_EXCL`` and mode 0600,
    so an existing file is never overwritten or left readable by others.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer

from fl_core.errors import FLError

__all__ = ["KeygenError", "PRIVATE_KEY", "PUBLIC_KEY", "THRESHOLD_PARAMS", "keygen_paillier", "register", "share_file"]

PRIVATE_KEY = "paillier-private.key"
PUBLIC_KEY = "paillier-public.key"
THRESHOLD_PARAMS = "paillier-threshold.params"


def share_file(index: int) -> str:
    """File name of threshold key share ``index``."""
    return f"paillier-share-{index}.key"


class KeygenError(FLError):
    """The key files cannot be written as asked (the message says what to change)."""


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, 0o600 if secret else 0o644)
    except FileExistsError:
        raise KeygenError(f"{path} exists: refusing to overwrite key material (choose another --out)") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if secret:
        os.chmod(path, 0o600)  # whatever the umask


def keygen_paillier(
    out: Path,
    *,
    key_bits: int = 2048,
    threshold: tuple[int, int] | None = None,
    insecure_small_key_for_tests: bool = False,
) -> dict[str, Any]:
    """Generate a Paillier key (single holder, or a dealt t-of-m threshold key) and write its files.

    Returns:
        ``{"public_key_sha256", "key_bits", "threshold", "files": {role: path}}``.

    Raises:
        KeygenError: ``out`` is not a directory or already holds key files.
        secagg.errors.ConfigurationError: the key size or threshold is invalid.
    """
    from dp.randomness import SystemRandomSource
    from secagg.paillier import (
        dump_key_share,
        dump_private_key,
        dump_public_key,
        dump_threshold_params,
        generate_keypair,
        generate_threshold_key,
        public_key_sha256,
    )
    from secagg.primitives.paillier_core import check_key_bits

    check_key_bits(key_bits, insecure_small_key_for_tests=insecure_small_key_for_tests)
    if out.exists() and not out.is_dir():
        raise KeygenError(f"--out {out} exists and is not a directory")
    names = [PUBLIC_KEY, PRIVATE_KEY, THRESHOLD_PARAMS]
    if threshold is not None:
        names += [share_file(i) for i in range(1, threshold[1] + 1)]
    clash = [n for n in names if (out / n).exists()]
    if clash:
        raise KeygenError(f"{out} already holds {', '.join(clash)}: refusing to overwrite key material")
    rng = SystemRandomSource()
    files: dict[str, str] = {}
    if threshold is None:
        sk = generate_keypair(rng, key_bits=key_bits, insecure_small_key_for_tests=insecure_small_key_for_tests)
        pk = sk.public_key
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write(out / PRIVATE_KEY, dump_private_key(sk), secret=True)
        files["private_key"] = str(out / PRIVATE_KEY)
    else:
        t, m = threshold
        params, shares = generate_threshold_key(
            rng, threshold=t, parties=m, key_bits=key_bits, insecure_small_key_for_tests=insecure_small_key_for_tests
        )
        pk = params.public_key
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        for share in shares:
            _write(out / share_file(share.index), dump_key_share(share), secret=True)
            files[f"share_{share.index}"] = str(out / share_file(share.index))
        _write(out / THRESHOLD_PARAMS, dump_threshold_params(params), secret=False)
        files["threshold_params"] = str(out / THRESHOLD_PARAMS)
    _write(out / PUBLIC_KEY, dump_public_key(pk), secret=False)
    files["public_key"] = str(out / PUBLIC_KEY)
    return {
        "public_key_sha256": public_key_sha256(pk),
        "key_bits": pk.bits,
        "threshold": None if threshold is None else f"{threshold[0]}/{threshold[1]}",
        "files": files,
    }


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    keygen_app = typer.Typer(help="Generate key material for parties that run apart from the server.")
    app.add_typer(keygen_app, name="keygen")

    @keygen_app.command("paillier")
    def paillier(
        out: Path = typer.Option(..., "--out", help="Directory for the key files (created, mode 0700)."),
        threshold: Optional[str] = typer.Option(
            None, "--threshold", help="t/m: deal a t-of-m threshold key (one share file per decryptor)."
        ),
        key_bits: int = typer.Option(2048, "--key-bits", help="Modulus size in bits (>= 2048)."),
        insecure_small_key_for_tests: bool = typer.Option(
            False, "--insecure-small-key-for-tests", help="Allow moduli below 2048 bits. Tests only, never real data."
        ),
    ) -> None:
        """Write a Paillier private key (or t-of-m key shares) and the public key; print its SHA-256."""
        from fl_core.backend_paillier import parse_threshold
        from fl_core.errors import ConfigError
        from secagg.errors import SecAggError

        try:
            result = keygen_paillier(
                out,
                key_bits=key_bits,
                threshold=parse_threshold(threshold),
                insecure_small_key_for_tests=insecure_small_key_for_tests,
            )
        except (KeygenError, ConfigError, SecAggError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(json.dumps(result, indent=2))

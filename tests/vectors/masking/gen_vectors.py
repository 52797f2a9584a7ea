"""Regenerate masking_vectors.json WITHOUT using privagg or pyca/cryptography.

Independent sources:
* AES-128-CTR keystream: the ``openssl enc`` command line tool (OpenSSL's own CLI,
  not the Python bindings), encrypting zero bytes under the all-zero counter block.
* HKDF-SHA256: a direct transcription of RFC 5869 section 2 with Python's
  ``hmac``/``hashlib`` modules.
* Shamir: polynomial evaluation with Python ints from fixed coefficients, and
  reconstruction with exact rational Lagrange interpolation (``fractions``).

Run from the repository root: ``python tests/vectors/masking/gen_vectors.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

OUT = Path(__file__).with_name("masking_vectors.json")
PRIME = (1 << 256) + 297


def openssl_ctr_keystream(key: bytes, nbytes: int) -> bytes:
    out = subprocess.run(
        ["openssl", "enc", "-aes-128-ctr", "-nosalt", "-nopad", "-K", key.hex(), "-iv", "00" * 16],
        input=bytes(nbytes),
        capture_output=True,
        check=True,
    )
    return out.stdout


def hkdf_rfc5869(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    okm, block, i = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
        i += 1
    return okm[:length]


def prg_vectors() -> list[dict[str, object]]:
    out = []
    for key_hex, bits, dim in [
        (bytes(range(16)).hex(), 32, 12),
        (bytes(range(16)).hex(), 20, 12),
        (bytes(range(16)).hex(), 8, 40),
        ("ff" * 16, 64, 6),
        (hashlib.sha256(b"privagg prg vector").hexdigest()[:32], 16, 20),
    ]:
        width = 8 if bits <= 8 else 16 if bits <= 16 else 32 if bits <= 32 else 64
        ks = openssl_ctr_keystream(bytes.fromhex(key_hex), dim * width // 8)
        words = struct.unpack(f"<{dim}{ {8: 'B', 16: 'H', 32: 'I', 64: 'Q'}[width] }", ks)
        out.append(
            {
                "seed": key_hex,
                "bits": bits,
                "dim": dim,
                "expected": [w & ((1 << bits) - 1) for w in words],
            }
        )
    # Long enough to cross the 128 KiB chunk boundary of the streaming implementation.
    key = hashlib.sha256(b"privagg prg chunk boundary").digest()[:16]
    dim = (1 << 16) + 7
    ks = openssl_ctr_keystream(key, 4 * dim)
    out.append(
        {
            "seed": key.hex(),
            "bits": 32,
            "dim": dim,
            "sha256_of_le_bytes": hashlib.sha256(ks).hexdigest(),
        }
    )
    return out


LABELS = [
    "privagg/secagg/v2/pairwise-mask",
    "privagg/secagg/v1/self-mask",
    "privagg/secagg/v1/share-encryption",
    "privagg/secagg/v1/graph",
    "privagg/secagg/v1/self-mask-commitment",
    "privagg/secagg/v1/rotation",
    "privagg/secagg/v1/terms",
]


def kdf_vectors() -> list[dict[str, str]]:
    secret = bytes(range(100, 132))
    context = struct.pack("<QII", 7, 3, 11)
    return [
        {
            "label": label,
            "secret": secret.hex(),
            "context": context.hex(),
            "okm": hkdf_rfc5869(secret, b"", label.encode() + b"\x00" + context, 32).hex(),
        }
        for label in LABELS
    ]


def binding_vectors() -> dict[str, object]:
    """The round-terms binding: pairwise seeds (label v2, context round || lo || hi || terms digest)
    from the RFC 7748 section 6.1 shared secret, and terms digests (info = label || 0x00 || kind)."""
    published = json.loads(OUT.with_name("published_vectors.json").read_text())["rfc7748_61_x25519_dh"]
    secret = bytes.fromhex(published["shared"])
    terms_a = hashlib.sha256(b"privagg terms vector a").digest()
    terms_b = hashlib.sha256(b"privagg terms vector b").digest()
    seeds = []
    for round_id, lo, hi, terms in [(7, 3, 11, terms_a), (7, 3, 11, terms_b), (1, 1, 2, bytes(32))]:
        context = struct.pack("<QII", round_id, lo, hi) + terms
        seeds.append(
            {
                "round": round_id,
                "lo": lo,
                "hi": hi,
                "terms": terms.hex(),
                "seed": hkdf_rfc5869(secret, b"", b"privagg/secagg/v2/pairwise-mask\x00" + context, 16).hex(),
            }
        )
    digests = []
    for kind, encoding in [("setup", b'{"v":1}'), ("round", b'{"clip":"0x1.0p+0","v":1}'), ("setup", b"")]:
        info = b"privagg/secagg/v1/terms\x00" + kind.encode()
        digests.append(
            {"kind": kind, "encoding": encoding.hex(), "digest": hkdf_rfc5869(encoding, b"", info, 32).hex()}
        )
    return {"x25519": "rfc7748_61_x25519_dh", "pairwise_seeds": seeds, "terms_digests": digests}


def eval_poly(coeffs: list[int], x: int) -> int:
    return sum(c * x**i for i, c in enumerate(coeffs)) % PRIME


def lagrange_rational(points: list[tuple[int, int]]) -> int:
    total = Fraction(0)
    for i, (xi, yi) in enumerate(points):
        term = Fraction(yi)
        for j, (xj, _) in enumerate(points):
            if i != j:
                term *= Fraction(xj, xj - xi)
        total += term
    num, den = total.numerator, total.denominator
    return num * pow(den, -1, PRIME) % PRIME


def shamir_vectors() -> list[dict[str, object]]:
    out = []
    cases = [
        (b"a", 1, [5]),
        (b"b", 2, [1, 2, 3]),
        (b"c", 3, [2, 7, 9, 40, 1000]),
        (b"d", 5, [3, 4, 5, 6, 7, 8, 9]),
    ]
    for seed, t, xs in cases:
        secret = hashlib.sha256(b"privagg shamir secret " + seed).digest()
        s = int.from_bytes(secret, "little")
        coeffs = [s] + [
            int.from_bytes(hashlib.sha512(b"coef" + seed + bytes([i])).digest(), "little") % PRIME
            for i in range(1, t)
        ]
        shares = {x: eval_poly(coeffs, x) for x in xs}
        rec = lagrange_rational([(x, shares[x]) for x in xs[-t:]])
        if rec != s:
            raise SystemExit("independent reconstruction failed")
        out.append(
            {
                "secret": secret.hex(),
                "threshold": t,
                "coefficients": [str(c) for c in coeffs[1:]],
                "shares": {str(x): str(y) for x, y in shares.items()},
            }
        )
    return out


def main() -> None:
    data = {
        "prime": str(PRIME),
        "prg_aes128ctr": prg_vectors(),
        "hkdf_labels": kdf_vectors(),
        "shamir": shamir_vectors(),
        "terms_binding": binding_vectors(),
    }
    OUT.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()

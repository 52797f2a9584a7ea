"""Regenerate the Paillier known-answer vectors in this directory (see PROVENANCE.md).

Run from the repository root:  python tests/vectors/paillier/generate.py

Keys come from privagg's own key generation with a recorded seed (so the tests can
check that key generation is reproducible); every ciphertext and plaintext in
``kat_phe_2048.json`` is computed by python-paillier (``phe``) or by Python's
built-in ``pow``, independently of privagg's encryption and decryption code.
"""

from __future__ import annotations

import json
import pathlib

from phe import paillier

from dp.randomness import SeededRandomSource
from secagg.primitives.paillier_core import generate_keypair

HERE = pathlib.Path(__file__).parent
SEED_SINGLE = "privagg paillier test key 2048 v1"
SEED_SAFE = "privagg paillier safe-prime test key 2048 v1"


def main() -> None:
    sk = generate_keypair(SeededRandomSource(SEED_SINGLE), key_bits=2048)
    safe = generate_keypair(SeededRandomSource(SEED_SAFE), key_bits=2048, safe_primes=True)
    keys = {
        "single": {
            "seed": SEED_SINGLE,
            "safe_primes": False,
            "n": str(sk.public_key.n),
            "p": str(sk.p),
            "q": str(sk.q),
            "hs": str(sk.public_key.hs),
            "djn_exponent_bits": sk.public_key.djn_exponent_bits,
        },
        "safe": {
            "seed": SEED_SAFE,
            "safe_primes": True,
            "n": str(safe.public_key.n),
            "p": str(safe.p),
            "q": str(safe.q),
            "hs": str(safe.public_key.hs),
            "djn_exponent_bits": safe.public_key.djn_exponent_bits,
        },
    }
    (HERE / "keys_2048.json").write_text(json.dumps(keys, indent=1) + "\n")

    n = int(sk.public_key.n)
    n2 = n * n
    hs = int(sk.public_key.hs)
    ppk = paillier.PaillierPublicKey(n)
    psk = paillier.PaillierPrivateKey(ppk, int(sk.p), int(sk.q))
    src = SeededRandomSource("privagg paillier kat inputs v1")
    cases = []
    plaintexts = [0, 1, 2, 65535, (1 << 2046) + 12345, n - 1]
    for m in plaintexts:
        r = int.from_bytes(src.random_bytes(256), "big") % n
        c_std = ppk.raw_encrypt(m, r_value=r)  # phe: (1 + n m) r^n mod n^2
        e = int.from_bytes(src.random_bytes(128), "big")  # 1024-bit DJN exponent
        c_djn = ((1 + n * m) * pow(hs, e, n2)) % n2  # built-in pow, independent of privagg
        if psk.raw_decrypt(c_std) != m or psk.raw_decrypt(c_djn) != m:
            raise SystemExit("phe does not decrypt a vector: refusing to write it")
        cases.append({"m": str(m), "r": str(r), "c_standard": str(c_std), "djn_exponent": str(e), "c_djn": str(c_djn)})
    # Ciphertexts made by phe's own randomised encryption (fixed once, decrypted by privagg).
    phe_made = []
    for m in (7, 123456789, 1 << 100):
        phe_made.append({"m": str(m), "c": str(ppk.encrypt(m).ciphertext())})
    (HERE / "kat_phe_2048.json").write_text(
        json.dumps({"key": "single", "cases": cases, "phe_encrypted": phe_made}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()

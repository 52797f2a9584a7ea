"""AES-256-CTR mask generator: known answers, streaming equivalence, uniformity, in-place ops."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from secagg.primitives import InvalidKeyError, PrimitiveError, prg
from secagg.ring import RingSpec

VECTORS = Path(__file__).parents[1] / "vectors" / "masking"
PUBLISHED = json.loads((VECTORS / "published_vectors.json").read_text())
OURS = json.loads((VECTORS / "masking_vectors.json").read_text())


def reference_expand(seed: bytes, ring: RingSpec, dim: int) -> np.ndarray:
    """Slow, obviously correct oracle: one keystream of the whole length, per-element Python ints."""
    width = ring.dtype.itemsize
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    ks = enc.update(bytes(dim * width))
    vals = [int.from_bytes(ks[i * width : (i + 1) * width], "little") % ring.modulus for i in range(dim)]
    return np.array(vals, dtype=ring.dtype)


def test_nist_sp800_38a_f51_ctr_aes128_keystream() -> None:
    v = PUBLISHED["sp800_38a_f51_ctr_aes128"]
    ks = prg.expand(
        bytes.fromhex(v["key"]), RingSpec(8), 64, counter_block=bytes.fromhex(v["init_counter"])
    )
    pt, ct = bytes.fromhex(v["plaintext"]), bytes.fromhex(v["ciphertext"])
    assert bytes(ks.tobytes()) == bytes(a ^ b for a, b in zip(pt, ct))


@pytest.mark.parametrize("case", [c for c in OURS["prg_aes128ctr"] if "expected" in c])
def test_prg_known_answers_from_openssl_cli(case: dict) -> None:
    ring = RingSpec(case["bits"])
    out = prg.expand(bytes.fromhex(case["seed"]), ring, case["dim"])
    assert out.dtype == ring.dtype
    assert [int(x) for x in out] == case["expected"]


def test_prg_chunk_boundary_known_answer() -> None:
    (case,) = [c for c in OURS["prg_aes128ctr"] if "sha256_of_le_bytes" in c]
    out = prg.expand(bytes.fromhex(case["seed"]), RingSpec(32), case["dim"])
    assert case["dim"] * 4 > prg.CHUNK_BYTES
    assert hashlib.sha256(out.astype("<u4").tobytes()).hexdigest() == case["sha256_of_le_bytes"]


@given(
    seed=st.binary(min_size=16, max_size=16),
    bits=st.sampled_from([1, 7, 8, 13, 16, 20, 31, 32, 33, 63, 64]),
    dim=st.integers(1, 300),
)
def test_streamed_expansion_matches_reference(seed: bytes, bits: int, dim: int) -> None:
    ring = RingSpec(bits)
    assert np.array_equal(prg.expand(seed, ring, dim), reference_expand(seed, ring, dim))


@given(
    seed=st.binary(min_size=16, max_size=16),
    bits=st.sampled_from([5, 16, 32, 64]),
    base=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=50),
)
def test_add_then_sub_is_identity_and_add_matches_ring_add(seed: bytes, bits: int, base: list[int]) -> None:
    ring = RingSpec(bits)
    x = np.array([b % ring.modulus for b in base], dtype=ring.dtype)
    acc = x.copy()
    prg.add_mask_into(acc, seed, ring)
    expect = ring.add_into(x.copy(), prg.expand(seed, ring, len(base)))
    assert np.array_equal(acc, expect)
    prg.add_mask_into(acc, seed, ring, op="sub")
    assert np.array_equal(acc, x)


def test_add_is_in_place() -> None:
    ring = RingSpec(32)
    acc = ring.zeros(prg.CHUNK_BYTES // 2 + 3)
    out = prg.add_mask_into(acc, bytes(16), ring)
    assert out is acc and acc.any()


def test_distinct_seeds_give_distinct_masks() -> None:
    ring = RingSpec(32)
    assert not np.array_equal(prg.expand(bytes(16), ring, 64), prg.expand(b"\x01" + bytes(15), ring, 64))


def test_mask_bytes_are_uniform_chi_square() -> None:
    ring = RingSpec(32)
    out = prg.expand(hashlib.sha256(b"uniformity").digest()[:16], ring, 1 << 16)
    counts = np.bincount(np.frombuffer(out.tobytes(), dtype=np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_no_modulo_bias_in_narrow_ring() -> None:
    """A 3-bit ring in uint8: every residue equally likely (8 | 256)."""
    out = prg.expand(hashlib.sha256(b"bias").digest()[:16], RingSpec(3), 80_000)
    counts = np.bincount(out, minlength=8)
    assert counts.shape == (8,)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_rejects_wrong_seed_length() -> None:
    with pytest.raises(InvalidKeyError, match="16 bytes"):
        prg.add_mask_into(RingSpec(32).zeros(4), bytes(32), RingSpec(32))


def test_rejects_wrong_dtype() -> None:
    with pytest.raises(PrimitiveError, match="accumulator"):
        prg.add_mask_into(np.zeros(4, dtype=np.uint64), bytes(16), RingSpec(32))


def test_rejects_unknown_op() -> None:
    with pytest.raises(PrimitiveError, match="op must be"):
        prg.add_mask_into(RingSpec(32).zeros(4), bytes(16), RingSpec(32), op="mul")  # type: ignore[arg-type]


@given(
    seeds=st.lists(st.tuples(st.binary(min_size=16, max_size=16), st.sampled_from(["add", "sub"])), max_size=6),
    bits=st.sampled_from([3, 16, 32, 64]),
    dim=st.integers(1, 200),
)
def test_fused_multi_mask_equals_one_mask_at_a_time(seeds: list, bits: int, dim: int) -> None:
    ring = RingSpec(bits)
    fused = prg.add_masks_into(ring.zeros(dim), seeds, ring)
    slow = [0] * dim
    for seed, op in seeds:
        ref = reference_expand(seed, ring, dim)
        slow = [(a + (int(r) if op == "add" else -int(r))) % ring.modulus for a, r in zip(slow, ref)]
    assert [int(v) for v in fused] == slow


def test_fused_crosses_chunks() -> None:
    ring = RingSpec(32)
    dim = 3 * prg.CHUNK_BYTES // 4 + 5
    seeds = [(bytes([i]) * 16, "add" if i % 2 else "sub") for i in range(3)]
    one_by_one = ring.zeros(dim)
    for s, op in seeds:
        prg.add_mask_into(one_by_one, s, ring, op=op)
    assert np.array_equal(prg.add_masks_into(ring.zeros(dim), seeds, ring), one_by_one)

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp.randomness import SeededRandomSource, SystemRandomSource, uniform_from_bytes
from secagg import RandomSource as RandomSourceProtocol


def test_sources_satisfy_the_secagg_protocol():
    assert isinstance(SystemRandomSource(), RandomSourceProtocol)
    assert isinstance(SeededRandomSource(1), RandomSourceProtocol)


def test_seeded_is_deterministic_and_chunking_invariant():
    a, b = SeededRandomSource(7), SeededRandomSource(7)
    whole = a.random_bytes(200_000)
    parts = b.random_bytes(3) + b.random_bytes(70_000) + b.random_bytes(129_997)
    assert whole == parts
    assert SeededRandomSource(8).random_bytes(32) != SeededRandomSource(7).random_bytes(32)


def test_spawn_is_independent_of_position_and_label_specific():
    a = SeededRandomSource("s")
    c1 = a.spawn("x").random_bytes(16)
    a.random_bytes(1000)
    assert a.spawn("x").random_bytes(16) == c1
    assert a.spawn("y").random_bytes(16) != c1


def test_uniform_range_and_resolution():
    u = SeededRandomSource(1).uniform(100_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    assert uniform_from_bytes(b"\xff" * 8, 1)[0] == (2**53 - 1) / 2**53


@given(st.integers(1, 10**6))
def test_randbelow_in_range(n):
    assert 0 <= SeededRandomSource(n).randbelow(n) < n


def test_randbelow_unbiased_small_n():
    r = SeededRandomSource(3)
    counts = np.bincount([r.randbelow(3) for _ in range(30_000)], minlength=3)
    assert np.all(np.abs(counts - 10_000) < 400)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        SeededRandomSource(1).randbelow(0)
    with pytest.raises(ValueError):
        SeededRandomSource(1).random_bytes(-1)


def test_system_source_draws_fresh_bytes():
    s = SystemRandomSource()
    assert s.random_bytes(32) != s.random_bytes(32)
    assert isinstance(s.spawn("a"), SystemRandomSource)
    assert len(s.uint64(5)) == 5


def test_base_source_is_abstract():
    from dp.randomness import RandomSource

    with pytest.raises(TypeError, match="abstract"):
        RandomSource()  # type: ignore[abstract]


def test_generator_is_aes128_ctr_fips197_known_answer() -> None:
    """``generator()``'s bit stream is AES-128 of a little-endian 128-bit counter. Provenance:
    FIPS-197 Appendix C.1 (key 000102...0f, plaintext 00112233...ff, ciphertext 69c4e0d8...c55a),
    reached by starting the counter at that plaintext's little-endian value."""
    from randomgen import AESCounter

    key = bytes(range(16))
    pt = bytes.fromhex("00112233445566778899aabbccddeeff")
    bg = AESCounter(key=int.from_bytes(key, "little"), counter=int.from_bytes(pt, "little"))
    first = np.asarray(bg.random_raw(2), dtype="<u8").tobytes()
    assert first == bytes.fromhex("69c4e0d86a7b0430d8cdb78070b4c55a")


def test_generator_stream_equals_aes_ctr_from_pyca() -> None:
    """The whole stream of a generator keyed by a source equals pyca/cryptography's AES-128-ECB of
    counters 0, 1, 2, ... (little-endian), with the key the source's first 16 bytes."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = SeededRandomSource("kat").random_bytes(16)
    raw = np.asarray(SeededRandomSource("kat").generator().bit_generator.random_raw(64), dtype="<u8").tobytes()
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    expected = b"".join(enc.update(i.to_bytes(16, "little")) for i in range(32)) + enc.finalize()
    assert raw == expected


def test_generator_is_deterministic_when_seeded_and_fresh_per_call() -> None:
    a, b = SeededRandomSource(5), SeededRandomSource(5)
    assert np.array_equal(a.generator().random(10), b.generator().random(10))
    assert not np.array_equal(a.generator().random(10), a.generator().random(10))  # new key each call
    s = SystemRandomSource()
    assert not np.array_equal(s.generator().random(10), s.generator().random(10))


def test_bulk_uniform_range_and_moments() -> None:
    u = SystemRandomSource().uniform(200_000)
    assert u.shape == (200_000,) and u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002


def reference_seeded_stream(source: SeededRandomSource, n: int) -> bytes:
    """Obviously correct reference: whole 64 KiB SHAKE-256 blocks of (key || counter), concatenated."""
    import hashlib

    count = n // (1 << 16) + 1
    blocks = [hashlib.shake_256(source._key + c.to_bytes(8, "little")).digest(1 << 16) for c in range(count)]
    return b"".join(blocks)[:n]


@given(st.lists(st.sampled_from([0, 1, 5, 16, 1000, 1024, 1025, 4096, 65_535, 65_536, 70_000, 140_000]), max_size=10))
def test_seeded_stream_is_the_whole_block_stream_however_it_is_read(sizes: list[int]) -> None:
    """Blocks are squeezed only as far as read (a SHAKE output is a prefix of a longer one): the
    bytes are still exactly the whole-block stream, for any sequence of read sizes."""
    src = SeededRandomSource(11).spawn("stream")
    got = b"".join(src.random_bytes(k) for k in sizes)
    assert got == reference_seeded_stream(SeededRandomSource(11).spawn("stream"), sum(sizes))

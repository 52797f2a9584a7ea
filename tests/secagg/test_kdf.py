"""HKDF-SHA256: RFC 5869 A.1, one known answer per label (independent stdlib HKDF), separation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.primitives import PrimitiveError, kdf

VECTORS = Path(__file__).parents[1] / "vectors" / "masking"
PUBLISHED = json.loads((VECTORS / "published_vectors.json").read_text())
OURS = json.loads((VECTORS / "masking_vectors.json").read_text())


def test_rfc5869_a1() -> None:
    v = PUBLISHED["rfc5869_a1_hkdf_sha256"]
    okm = kdf.hkdf_sha256(
        bytes.fromhex(v["ikm"]), salt=bytes.fromhex(v["salt"]), info=bytes.fromhex(v["info"]), length=v["length"]
    )
    assert okm.hex() == v["okm"]


def test_every_label_has_a_known_answer() -> None:
    assert {c["label"].encode() for c in OURS["hkdf_labels"]} == set(kdf.LABELS)


@pytest.mark.parametrize("case", OURS["hkdf_labels"], ids=lambda c: c["label"].rsplit("/", 1)[-1])
def test_label_known_answers(case: dict) -> None:
    out = kdf.derive(bytes.fromhex(case["secret"]), case["label"].encode(), bytes.fromhex(case["context"]))
    assert out.hex() == case["okm"]


def test_labels_are_distinct_and_zero_free() -> None:
    assert len(set(kdf.LABELS)) == len(kdf.LABELS)
    assert all(b"\x00" not in label for label in kdf.LABELS)


@given(secret=st.binary(min_size=1, max_size=64), ctx=st.binary(max_size=40))
def test_labels_separate_domains(secret: bytes, ctx: bytes) -> None:
    outs = {kdf.derive(secret, label, ctx) for label in kdf.LABELS}
    assert len(outs) == len(kdf.LABELS)


@given(secret=st.binary(min_size=1, max_size=64), a=st.binary(max_size=20), b=st.binary(max_size=20))
def test_context_binds(secret: bytes, a: bytes, b: bytes) -> None:
    same = kdf.derive(secret, kdf.LABEL_SELF_MASK, a) == kdf.derive(secret, kdf.LABEL_SELF_MASK, b)
    assert same == (a == b)


def test_unknown_label_refused() -> None:
    with pytest.raises(PrimitiveError, match="unknown HKDF label"):
        kdf.derive(bytes(32), b"made-up")

"""Sealed parts (tgfs.store.sealing, issue "encrypted at rest"), before any mount uses them:
every range of every size opens to the plaintext from only the frames that hold it; a
flipped bit, frames swapped or taken from another part, a part cut short, and a wrong key
are all refused (SealBroken), never bytes."""

from __future__ import annotations

import os
import random
import stat

import pytest

from tgfs import keys
from tgfs.store import sealing
from tgfs.store.sealing import FRAME, SEALED_FRAME, SealBroken, Sealer

SIZES = [0, 1, FRAME - 1, FRAME, FRAME + 1, 3 * FRAME + 5]


def _open(sealer: Sealer, salt: bytes, stored: bytes, offset: int, length: int, size: int):
    start, count = sealing.sealed_range(offset, length, size)
    return sealer.open(salt, stored[start : start + count], offset, length, size)


@pytest.mark.parametrize("size", SIZES)
def test_every_range_opens_to_the_plaintext(size):
    sealer, salt = Sealer(os.urandom(32)), sealing.new_salt()
    plain = os.urandom(size)
    stored = sealer.seal(salt, plain)
    assert len(stored) == sealing.sealed_size(size)
    # Nothing readable is stored: judged on 64 bytes or more (a byte or two of plaintext
    # turns up in any random ciphertext by chance: 1 in 15 runs failed on one byte).
    assert size < 64 or plain[:64] not in stored
    rng = random.Random(size)
    ranges = [(0, size), (0, 1), (max(0, size - 1), 1), (FRAME - 3, 7), (size, 10)]
    ranges += [(rng.randrange(size + 1), rng.randrange(2 * FRAME)) for _ in range(20)]
    for offset, length in ranges:
        got = _open(sealer, salt, stored, offset, length, size)
        assert got == plain[offset : offset + length], (offset, length)


def test_a_range_needs_only_its_frames():
    start, count = sealing.sealed_range(FRAME + 10, 20, 10 * FRAME)
    assert (start, count) == (SEALED_FRAME, SEALED_FRAME)  # one frame, the second
    start, count = sealing.sealed_range(FRAME - 1, 2, 10 * FRAME)
    assert (start, count) == (0, 2 * SEALED_FRAME)  # across a boundary: two


def test_tampering_swapping_cutting_and_wrong_keys_are_refused():
    sealer, salt = Sealer(os.urandom(32)), sealing.new_salt()
    size = 3 * FRAME + 100
    stored = bytearray(sealer.seal(salt, os.urandom(size)))

    flipped = bytearray(stored)
    flipped[FRAME + 20] ^= 1
    with pytest.raises(SealBroken, match="frame 1"):
        _open(sealer, salt, bytes(flipped), 0, size, size)

    a, b = stored[:SEALED_FRAME], stored[SEALED_FRAME : 2 * SEALED_FRAME]
    swapped = b + a + stored[2 * SEALED_FRAME :]
    with pytest.raises(SealBroken):
        _open(sealer, salt, bytes(swapped), 0, FRAME, size)

    other_salt = sealing.new_salt()  # the same frame position from another part
    other = sealer.seal(other_salt, os.urandom(size))
    mixed = stored[:SEALED_FRAME] + other[SEALED_FRAME : 2 * SEALED_FRAME]
    with pytest.raises(SealBroken):
        _open(sealer, salt, bytes(mixed), FRAME, 10, size)

    cut = bytes(stored[: 3 * SEALED_FRAME])  # the last frame dropped: 3 whole frames left
    with pytest.raises(SealBroken):  # frame 2 was not sealed as the last one
        sealer.open(salt, cut[2 * SEALED_FRAME :], 2 * FRAME, FRAME, 3 * FRAME)
    with pytest.raises(SealBroken, match="bytes stored"):  # or the size says more is due
        _open(sealer, salt, cut, 0, size, size)

    with pytest.raises(SealBroken):
        _open(Sealer(os.urandom(32)), salt, bytes(stored), 0, 10, size)


def test_keys_are_generated_private_and_parsed_back(tmp_path):
    path = tmp_path / "tgfs.key"
    made = keys.generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = keys.parse_key(path.read_text())
    assert len(key) == 32 and keys.key_id(key) == made
    with pytest.raises(FileExistsError):
        keys.generate_key_file(path)  # never over a key
    with pytest.raises(keys.BadKey):
        keys.parse_key("not a key")
    with pytest.raises(keys.BadKey):
        Sealer(b"short")


def test_a_mebibyte_of_store_holds_whole_frames():
    """Stripes and parts planned with plain_capacity seal into whole 1 MiB chunks (the
    store's download unit), and each chunk can be checked on its own."""
    unit = sealing.plain_capacity(2**20)
    assert sealing.sealed_size(unit) == 2**20 and 2**20 % SEALED_FRAME == 0
    assert sealing.sealed_size(sealing.plain_capacity(2000 * 2**20)) <= 2000 * 2**20
    sealer, salt = Sealer(os.urandom(32)), sealing.new_salt()
    size = 2 * unit + 1000
    stored = bytearray(sealer.seal(salt, os.urandom(size)))
    per_chunk = 2**20 // SEALED_FRAME
    for index in range(3):
        sealer.verify(
            salt, bytes(stored[index * 2**20 : (index + 1) * 2**20]), index * per_chunk, size
        )
    stored[2**20 + 5] ^= 1
    with pytest.raises(SealBroken, match=f"frame {per_chunk} failed"):
        sealer.verify(salt, bytes(stored[2**20 : 2 * 2**20]), per_chunk, size)

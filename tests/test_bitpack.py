"""The one bit packer: most significant bit first; version-1 files' order readable; masks round-trip."""

import pytest
import torch

from lightning_prune.core.bitpack import pack_bits, pack_mask, unpack_bits, unpack_mask


def test_bit_order_is_most_significant_first_like_numpy_packbits():
    np = pytest.importorskip("numpy")
    bits = torch.rand(1001, generator=torch.Generator().manual_seed(0)) > 0.5
    assert pack_bits(bits).tolist() == np.packbits(bits.numpy()).tolist()
    assert pack_bits(bits).tolist() != np.packbits(bits.numpy(), bitorder="little").tolist()
    assert torch.equal(unpack_bits(torch.from_numpy(np.packbits(bits.numpy(), bitorder="little")), 1001, "little"), bits)


@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5, 2), (64,)])
def test_mask_round_trip(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.3
    packed = pack_mask(mask)
    assert packed["bits"].dtype == torch.uint8 and packed["bits"].numel() == (mask.numel() + 7) // 8
    assert torch.equal(unpack_mask(packed), mask)


def test_errors():
    with pytest.raises(ValueError, match="packed bits hold 8 entries, 9 are needed"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="`bitorder` must be one of"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 8, "middle")
    with pytest.raises(ValueError, match="packed mask holds 8 bits, its shape \\[3, 5\\] needs 15"):
        unpack_mask({"shape": [3, 5], "bits": torch.zeros(1, dtype=torch.uint8)})

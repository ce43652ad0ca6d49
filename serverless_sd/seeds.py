"""Seeds: 64-bit, each naming its own image.

PyTorch's CPU generator (mt19937) keeps only the low 32 bits of `manual_seed`, so seed s and s + 2^32 would give the
same image while the API reports them as different. Seeds below 2^32 are seeded as PyTorch seeds them (the same
image as plain diffusers with `torch.Generator().manual_seed(seed)`); larger ones fill mt19937's 624 state words
from numpy's SeedSequence, which mixes every bit of the seed.
"""

import numpy as np
import torch

from .schema import SEED_LIMIT

_MT_WORDS = 624
# torch's CPUGeneratorImplState: int64 initial seed, int left, int seeded, uint64 next, then 624 uint64 words
# (each holding one uint32 of mt19937's state), then the normal-sample cache.
_WORDS_AT = 24


def generator(seed: int) -> torch.Generator:
    """A CPU generator for seed (0 <= seed < 2^64): the same seed gives the same image on any GPU or CPU."""
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    generator = torch.Generator("cpu").manual_seed(seed % 2**32)
    if seed < 2**32:
        return generator
    state = generator.get_state().numpy().copy()
    words = np.random.SeedSequence(seed).generate_state(_MT_WORDS, np.uint32).astype("<u8")
    words[0] |= 0x80000000  # mt19937's own seeding guarantees a non-zero state this way
    state[_WORDS_AT:_WORDS_AT + _MT_WORDS * 8] = np.frombuffer(words.tobytes(), np.uint8)
    state[:8] = np.frombuffer(np.array([seed], "<u8").tobytes(), np.uint8)
    generator.set_state(torch.from_numpy(state))
    return generator


def _check_layout() -> None:
    """Fail at import, not silently, if a PyTorch release moves the generator's state."""
    state = torch.Generator("cpu").manual_seed(5).get_state().numpy()
    words = np.frombuffer(state[_WORDS_AT:_WORDS_AT + _MT_WORDS * 8].tobytes(), "<u8")
    initial_seed = int.from_bytes(state[:8].tobytes(), "little")
    if state.size != 5056 or initial_seed != 5 or words[0] != 5 or words.max() >= 2**32:
        raise RuntimeError("torch's CPU generator state layout changed: serverless_sd/seeds.py must be updated")


_check_layout()

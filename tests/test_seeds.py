"""byzbn.fl.seeds: every (run seed, step, stream[, client, ...]) a run draws from gets its own seed.

numpy's SeedSequence drops trailing zero words and splits an int above 2^32 into several words, so the
plain list [seed, step, stream, *more] collides: (t, s) = (t, s, 0), and (t, 2^32) = (t, 0, 1) — the
attack stream of the statistics against client 1's batch stream.
"""
from __future__ import annotations

import pytest

from byzbn.fl import seeds
from byzbn.flower.strategy import NODE_SAMPLE_STREAM

STEPS, CLIENTS, LOCAL_STEPS = 40, 12, 4


def used_streams(seed: int) -> dict:
    """Every seed tuple the runners draw from (byzbn.fl, byzbn.flower) for STEPS steps of CLIENTS clients."""
    streams = {"node sample": NODE_SAMPLE_STREAM}   # every stream byzbn.fl.seeds names, per step
    for name in dir(seeds):
        value = getattr(seeds, name)
        if name.endswith("_STREAM") and name not in ("BATCH_STREAM", "CLIENT_DROPOUT_STREAM"):
            streams[name] = value
        elif name.endswith("_STREAMS"):
            streams.update({(name, channel): s for channel, s in value.items()})
    assert len(streams) >= 7
    tuples = {}
    for t in range(STEPS):
        for name, stream in streams.items():
            tuples[(name, t)] = (seed, t, stream)
        for i in range(CLIENTS):
            tuples[("batch", t, i)] = (seed, t, seeds.BATCH_STREAM, i)
            tuples[("client dropout", t, i)] = (seed, t, seeds.CLIENT_DROPOUT_STREAM + i)
            tuples[("node attack", "grads", t, i)] = (seed, t, seeds.ATTACK_STREAMS["grads"], i)
            for e in range(LOCAL_STEPS):
                tuples[("node attack", "stats", t, i, e)] = (seed, t, seeds.ATTACK_STREAMS["stats"], i, e)
    return tuples


@pytest.mark.parametrize("seed", [0, 1, 7, 2 ** 40])
def test_every_stream_a_run_uses_gets_a_distinct_seed(seed):
    tuples = used_streams(seed)
    assert len(set(tuples.values())) == len(tuples)   # the uses themselves are distinct tuples
    drawn = {name: seeds.step_seed(*t) for name, t in tuples.items()}
    assert len(set(drawn.values())) == len(drawn)


def test_the_collisions_of_a_plain_seed_sequence_are_gone():
    assert seeds.step_seed(3, 5, 0, 0) != seeds.step_seed(3, 5, 0)
    assert seeds.step_seed(3, 5, seeds.ATTACK_STREAMS["stats"]) != seeds.step_seed(3, 5, seeds.BATCH_STREAM, 1)
    assert seeds.step_seed(2 ** 32, 0, 0) != seeds.step_seed(0, 1, 0)
    assert len({seeds.step_seed(0, 0, 0, *([0] * k)) for k in range(5)}) == 5


def test_seeds_are_reproducible_63_bit_and_reject_components_outside_64_bits():
    assert seeds.step_seed(1, 2, 3, 4) == seeds.step_seed(1, 2, 3, 4)
    assert 0 <= seeds.step_seed(1, 2, 3) < 2 ** 63
    for bad in (-1, 2 ** 64, 1.5, True):
        with pytest.raises(ValueError, match="seed components must be ints"):
            seeds.step_seed(bad, 0, 0)

"""tita::decode_advance, a decode step's bookkeeping: the CPU kernel against the reference over
batch sizes, stop-id sets and failed rows; opcheck; torch.compile; bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import needs_compiled

from tita_ext import ops, reference


def case(batch: int, stops: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    sampled = torch.randint(0, 12, (batch,), generator=g)
    sampled[torch.rand(batch, generator=g) < 0.1] = -1  # rows the op could not sample
    finished = torch.rand(batch, generator=g) < 0.3
    stop_ids = torch.randperm(12, generator=g)[:stops]
    return sampled, finished, stop_ids


def expected(sampled, finished, stop_ids, pad):
    """The definition, row by row in Python."""
    record, feed, after = [], [], []
    for token, was in zip(sampled.tolist(), finished.tolist()):
        token = pad if was else token
        record.append(token)
        feed.append(pad if token < 0 else token)
        after.append(was or token < 0 or token in stop_ids.tolist())
    return record, feed, after


@pytest.mark.parametrize("batch", [1, 3, 64, 1000])
@pytest.mark.parametrize("stops", [0, 1, 3])
@pytest.mark.parametrize("backend", [pytest.param("compiled", marks=needs_compiled), "reference"])
def test_matches_the_definition(batch, stops, backend):
    for seed in range(3):
        sampled, finished, stop_ids = case(batch, stops, seed)
        pad = 7
        record, feed, after, done = ops.decode_advance(sampled, finished, stop_ids, pad, backend=backend)
        want_record, want_feed, want_after = expected(sampled, finished, stop_ids, pad)
        assert record.tolist() == want_record
        assert feed.shape == (batch, 1) and feed.flatten().tolist() == want_feed
        assert after.tolist() == want_after
        assert done.shape == () and bool(done) == all(want_after)


@needs_compiled
def test_all_finished_and_empty_batch():
    sampled = torch.tensor([3, 4])
    out = ops.decode_advance(sampled, torch.tensor([True, False]), torch.tensor([4]), 0)
    assert bool(out[3]) and out[0].tolist() == [0, 4]
    empty = ops.decode_advance(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool),
                               torch.tensor([1]), 0)
    assert empty[1].shape == (0, 1) and bool(empty[3])


@needs_compiled
@pytest.mark.parametrize("batch", [1, 5])
def test_opcheck(batch):
    sampled, finished, stop_ids = case(batch, 2, 0)
    torch.library.opcheck(torch.ops.tita.decode_advance.default, (sampled, finished, stop_ids, 3))


@needs_compiled
def test_compile_fullgraph_matches_eager():
    sampled, finished, stop_ids = case(9, 2, 1)
    compiled = torch.compile(lambda *a: torch.ops.tita.decode_advance(*a, 2), fullgraph=True)
    for got, want in zip(compiled(sampled, finished, stop_ids), reference.decode_advance(sampled, finished,
                                                                                         stop_ids, 2)):
        assert torch.equal(got, want)


def test_bad_input():
    sampled, finished, stop_ids = case(4, 1, 0)
    with pytest.raises(TypeError, match=r"sampled must be a 1-D torch.int64 tensor, got torch.int32"):
        ops.decode_advance(sampled.int(), finished, stop_ids, 0)
    with pytest.raises(TypeError, match=r"finished must be a 1-D torch.bool tensor"):
        ops.decode_advance(sampled, finished.long(), stop_ids, 0)
    with pytest.raises(ValueError, match=r"finished has shape \(3,\) but sampled has \(4,\)"):
        ops.decode_advance(sampled, finished[:3], stop_ids, 0)
    with pytest.raises(ValueError, match="pad_id must be an int >= 0"):
        ops.decode_advance(sampled, finished, stop_ids, -1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("batch", [1, 3, 300])
def test_cuda_matches_reference(batch):
    sampled, finished, stop_ids = (t.cuda() for t in case(batch, 2, 5))
    impl = ops.advance_impl(None, sampled.device)
    for got, want in zip(impl(sampled, finished, stop_ids, 4), reference.decode_advance(sampled, finished,
                                                                                       stop_ids, 4)):
        assert torch.equal(got, want)

"""The LM loss's labelled positions come with the batch (``PackedBatch.label_index``, built by
``pack`` on the host), so a training forward never asks the device where the labels are
(``nonzero`` on a GPU waits for it), and ``PackedBatch.to`` moves every tensor, the index too."""
import pytest
import torch

from conftest import PAD, PRED_IDS, random_examples, tiny_model
from megajepa import objective
from megajepa.layout import IGNORE_INDEX, Example, pack


@pytest.mark.parametrize("seed,k,lm_on_all,read_at", [(0, 1, False, "end"), (1, 3, True, "end"),
                                                      (2, 0, False, "last"), (3, 2, True, "last")])
def test_label_index_is_the_labelled_positions(seed, k, lm_on_all, read_at):
    batch = pack(random_examples(12, seed=seed), 48, k=k, pred_ids=PRED_IDS, pad_id=PAD,
                 lm_on_all=lm_on_all, read_at=read_at, min_rows=5)
    want = (batch.labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(-1)
    assert batch.label_index.dtype == torch.long and torch.equal(batch.label_index, want)
    assert batch.num_label_tokens == want.numel() > 0
    moved = batch.to("cpu")
    assert torch.equal(moved.label_index, want) and torch.equal(moved.labels, batch.labels)


def test_a_batch_without_labels_has_an_empty_index():
    batch = pack([Example("pair", [[5, 6, 4], [7, 3]])], 16, k=1, pred_ids=PRED_IDS, pad_id=PAD)
    empty = pack([], 16, k=1, pred_ids=PRED_IDS, pad_id=PAD, min_rows=1)
    assert batch.num_label_tokens == 2 and empty.num_label_tokens == 0
    assert empty.label_index.shape == (0,) and empty.label_index.dtype == torch.long


def test_single_pass_forward_reads_no_label_positions_off_the_device(monkeypatch):
    """The same loss as the positions found by ``nonzero``, and no ``nonzero`` call at all."""
    model = tiny_model()
    batch = pack(random_examples(10, seed=4), 64, k=2, pred_ids=PRED_IDS, pad_id=PAD)
    hidden = objective.hidden_states(model, batch.input_ids, batch.position_ids, batch.doc_ids,
                                     batch.roles)
    head = objective.lm_head(model)
    found = objective.lm_loss_sum(hidden, batch.labels, head)  # the fallback: nonzero here
    given = objective.lm_loss_sum(hidden, batch.labels, head, label_index=batch.label_index)
    torch.testing.assert_close(given, found, rtol=0, atol=0)

    def refuse(*a, **kw):
        raise AssertionError("nonzero() called in the training forward")

    monkeypatch.setattr(torch.Tensor, "nonzero", refuse)
    monkeypatch.setattr(torch, "nonzero", refuse)
    out = objective.forward(model, batch, lbd=1.0)
    torch.testing.assert_close(out.lm_loss, found / batch.num_label_tokens)
    out.loss.backward()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda_copies_every_tensor():
    batch = pack(random_examples(10, seed=5), 64, k=2, pred_ids=PRED_IDS, pad_id=PAD)
    moved = batch.to("cuda")
    torch.cuda.synchronize()
    for name in ("input_ids", "position_ids", "doc_ids", "roles", "labels", "pred_index",
                 "target_index", "label_index"):
        got = getattr(moved, name)
        assert got.is_cuda and torch.equal(got.cpu(), getattr(batch, name)), name

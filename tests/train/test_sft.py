"""Instruction SFT's pieces: the prompt masked out of the labels, packing, and the head run only where
labels are (`svdadapt train` end to end is in commands/test_train.py)."""

import torch

from svdadapt.train.datasets import IGNORE, sft_features


def test_sft_masks_prompts_and_packs():
    from svdadapt.data.samples import Sample

    features = sft_features([Sample([1, 2, 3, 4], 2), Sample([5, 6, 7], 1)], packing=False, max_length=16)
    assert features[0]["labels"] == [IGNORE, IGNORE, 3, 4] and features[1]["labels"] == [IGNORE, 6, 7]
    packed = sft_features([Sample([1, 2, 3, 4], 2), Sample([5, 6, 7], 1)], packing=True, max_length=16)
    assert len(packed) == 1 and packed[0]["input_ids"] == [1, 2, 3, 4, 5, 6, 7]


def test_head_runs_only_where_labels_are_and_the_loss_is_the_same(tiny_dirs):
    """The SFT loss with logits only at labelled positions equals transformers' full-logits loss
    (float32: same terms summed in another order, rtol 1e-6), and so do its gradients."""
    from svdadapt.models import load_model
    from svdadapt.train.trainer import on_labelled_positions

    model = load_model(str(tiny_dirs["llama"])).model
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (3, 20), generator=gen)
    labels = torch.full_like(ids, -100)
    labels[0, 12:16], labels[1, 5:7], labels[2, 18:] = ids[0, 12:16], ids[1, 5:7], ids[2, 18:]  # responses
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # a padded row
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    losses, grads = [], []
    for batch in (inputs, on_labelled_positions(model, inputs)):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    rewritten = on_labelled_positions(model, inputs)
    assert rewritten["logits_to_keep"].numel() < ids.shape[1] - 1  # fewer head positions than tokens
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-8)
    classification = {"input_ids": ids, "labels": torch.tensor([0, 1, 0])}
    assert on_labelled_positions(model, classification) is classification

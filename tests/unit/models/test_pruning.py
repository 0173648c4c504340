"""Static pruning of heads and feed-forward units: importance, the plan, the sliced model."""

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering

from qa_ray.config.trial import ModelConfig
from qa_ray.models.build import build_model
from qa_ray.models.pruning import PLAN_KEY, apply_plan, importance, plan, prune

HIDDEN, HEADS, UNITS, LAYERS = 32, 4, 48, 3
HEAD = HIDDEN // HEADS


def _model(seed: int = 0) -> BertForQuestionAnswering:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=UNITS,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    return BertForQuestionAnswering(config).eval()


def _batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, 60, (4, 10), generator=g),
        "start_positions": torch.randint(0, 10, (4,), generator=g),
        "end_positions": torch.randint(0, 10, (4,), generator=g),
    }


def test_head_importance_is_the_gradient_of_a_mask_on_each_head():
    """Michel et al.'s score, |dL/d mask_h|, measured with a real mask on the heads' outputs,
    equals what is computed from the output projection's weight and gradient."""
    model, batch = _model(), _batch()
    masks = [torch.ones(HEADS, requires_grad=True) for _ in range(LAYERS)]

    def masked(mask):
        def hook(module, args, output):
            return (output[0] * mask.repeat_interleave(HEAD), *output[1:])

        return hook

    handles = [layer.attention.self.register_forward_hook(masked(mask))
               for layer, mask in zip(model.bert.encoder.layer, masks, strict=True)]  # fmt: skip
    model(**batch).loss.backward()
    for h in handles:
        h.remove()
    heads, units = importance(model, [model(**batch).loss])
    for layer in range(LAYERS):
        torch.testing.assert_close(heads[layer], masks[layer].grad.abs(), rtol=1e-4, atol=1e-7)
    assert [u.shape for u in units] == [(UNITS,)] * LAYERS and all(u.sum() > 0 for u in units)


def test_the_plan_drops_the_least_important_heads_across_layers_keeping_one_per_layer():
    heads = [
        torch.tensor([1.0, 1.0, 1.0, 1.0]),  # flat: each 0.5 after the per-layer l2 norm
        torch.tensor([9.0, 0.1, 0.1, 0.1]),  # one strong head: the others are the weakest
        torch.tensor([0.0, 0.0, 0.0, 0.0]),  # all zero: all but one go first
    ]
    units = [torch.arange(10.0), torch.arange(10.0).flip(0), torch.ones(10)]
    kept = plan(heads, units, prune_heads=0.5, prune_ffn=0.3)
    assert kept["heads"] == [[0, 1, 2, 3], [0], [3]]
    assert kept["ffn"][0] == [3, 4, 5, 6, 7, 8, 9] and kept["ffn"][1] == [0, 1, 2, 3, 4, 5, 6]
    assert [len(u) for u in kept["ffn"]] == [7, 7, 7]
    # ties go in (layer, head) order: the last head of a flat layer stays
    assert plan(heads, units, prune_heads=0.99, prune_ffn=0.0)["heads"] == [[3], [0], [3]]


def test_pruning_shrinks_the_model_by_exactly_the_removed_heads_and_units_and_it_trains():
    model = _model()
    before = sum(p.numel() for p in model.parameters())
    kept = {"heads": [[0, 2], [1], [0, 1, 2, 3]], "ffn": [list(range(40)), list(range(48)),
                                                            list(range(0, 48, 2))]}  # fmt: skip
    apply_plan(model, kept)
    heads_gone, units_gone = 2 + 3 + 0, 8 + 0 + 24
    per_head = 3 * (HIDDEN * HEAD + HEAD) + HIDDEN * HEAD  # q, k, v rows; output columns
    per_unit = (HIDDEN + 1) + HIDDEN  # intermediate row and bias; output column
    after = sum(p.numel() for p in model.parameters())
    assert before - after == heads_gone * per_head + units_gone * per_unit
    assert getattr(model.config, PLAN_KEY) == kept
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch, losses = _batch(), []
    for _ in range(20):
        loss = model(**batch).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.5 * losses[0]


def test_prune_measures_then_slices_and_a_saved_pruned_model_loads_back(tmp_path):
    model = _model()
    done = prune(model, 0.25, 0.5, lambda m: (m(**_batch(s)).loss for s in range(3)))
    assert done["heads"] == (12, 9) and done["ffn_units"] == (144, 72)
    assert done["params"][1] < done["params"][0]
    model.save_pretrained(tmp_path)
    loaded = build_model(ModelConfig(name_or_path=str(tmp_path)), torch.device("cpu")).eval()
    batch = {"input_ids": _batch()["input_ids"]}
    torch.testing.assert_close(loaded(**batch).start_logits, model(**batch).start_logits)


def test_pruning_is_only_for_the_encoders_it_knows_and_full_precision(tiny_model_dir):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir("albert")), prune={"heads": 0.5})
    with pytest.raises(ValueError, match="supports model types bert.*but got 'albert'"):
        build_model(cfg, torch.device("cpu"), prune_losses=lambda m: iter(()))
    with pytest.raises(ValueError, match="needs 16 or 32-bit weights.*quantization_bits=4"):
        ModelConfig(name_or_path="x", prune={"heads": 0.5}, finetune="lora", quantization_bits=4)
    with pytest.raises(ValueError, match="no LoRA, k-bit or pruning"):
        ModelConfig(name_or_path="x", architecture="bilstm_attention", prune={"ffn": 0.5})


def test_measuring_holds_gradients_of_the_two_projections_only_and_restores_the_rest():
    """A LoRA trial never holds full gradients: measuring must not either (it would raise the
    trial's peak memory), and what trains afterwards is what trained before."""
    model = _model()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # frozen before
    seen = []

    def losses():
        for s in range(2):
            seen.append({n for n, p in model.named_parameters() if p.requires_grad})
            yield model(**_batch(s)).loss

    importance(model, losses())
    assert all(n.endswith(("attention.output.dense.weight", "output.dense.weight"))
               for n in seen[0]) and len(seen[0]) == 2 * LAYERS  # fmt: skip
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "bert.embeddings.word_embeddings.weight" not in trainable
    assert len(trainable) == len(list(model.parameters())) - 1
    assert all(p.grad is None for p in model.parameters())

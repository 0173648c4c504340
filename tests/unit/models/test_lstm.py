"""The LSTM + attention baseline: it learns, and goes through the same loop as a transformer."""

from __future__ import annotations

import pytest
import torch

from qa_ray.config.files import load_trial_config
from qa_ray.config.trial import ModelConfig
from qa_ray.errors import ConfigError
from qa_ray.models.build import build_model, model_size
from qa_ray.models.lstm import BiLSTMAttentionConfig, BiLSTMAttentionForQuestionAnswering
from tests.helpers import ASSETS, trial_dict


def test_it_learns_a_fixed_batch():
    torch.manual_seed(0)
    model = BiLSTMAttentionForQuestionAnswering(
        BiLSTMAttentionConfig(vocab_size=40, embedding_dim=16, hidden_size=16, dropout=0.0)
    )
    ids = torch.randint(1, 40, (8, 24))
    types = torch.zeros_like(ids)
    types[:, 8:] = 1  # question, then context
    starts, ends = torch.randint(8, 16, (8,)), torch.randint(16, 24, (8,))
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=types,
                 start_positions=starts, end_positions=ends)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = model(**batch).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    out = model(**{k: v for k, v in batch.items() if "positions" not in k})
    assert (out.start_logits.argmax(-1) == starts).all() and (
        out.end_logits.argmax(-1) == ends
    ).all()


def test_padding_is_never_an_answer():
    model = BiLSTMAttentionForQuestionAnswering(BiLSTMAttentionConfig(vocab_size=20))
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    out = model(input_ids=torch.tensor([[3, 4, 5, 0, 0]]), attention_mask=mask)
    assert out.start_logits[0, 3:].max() < out.start_logits[0, :3].min()


def test_built_from_a_tokenizer_with_pretrained_embeddings(tiny_model_dir):
    path = str(tiny_model_dir("bert"))
    cfg = ModelConfig(name_or_path=path, architecture="bilstm_attention",
                      lstm={"hidden_size": 8, "embeddings_from": path})  # fmt: skip
    model = build_model(cfg, torch.device("cpu"))
    from transformers import AutoModel

    want = AutoModel.from_pretrained(path).get_input_embeddings().weight
    assert torch.equal(model.embeddings.weight, want[: model.config.vocab_size])
    assert model_size(model).trainable_params == model_size(model).total_params


def test_a_trial_trains_scores_checkpoints_and_resumes(tiny_model_dir, tmp_path, capsys):
    import yaml

    from qa_ray.cli import main

    cfg = trial_dict(tiny_model_dir("bert"), tmp_path, model__architecture="bilstm_attention",
                     model__lstm={"hidden_size": 16, "embedding_dim": 16},
                     train__max_steps=4, train__eval_steps=2, train__save_checkpoints=True,
                     data__max_eval_examples=8)  # fmt: skip
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    metrics = (tmp_path / "out" / "metrics.json").read_text()
    assert '"eval_f1"' in metrics and '"step": 4' in metrics
    assert main(["train", str(path), "train.max_steps=6", "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out


def test_lora_or_kbit_on_the_lstm_is_a_validation_error(tmp_path):
    import yaml

    cfg = trial_dict(ASSETS / "wordpiece", tmp_path, model__architecture="bilstm_attention",
                     model__finetune="lora")  # fmt: skip
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="trained from scratch.*finetune=lora"):
        load_trial_config(path)


def test_a_windows_logits_do_not_depend_on_the_longer_windows_of_its_batch():
    """Packed LSTMs: a window scored alone and beside a longer one gives the same logits (the
    backward direction never reads the batch's padding), so eval scores do not depend on
    ``eval_batch_size``."""
    torch.manual_seed(0)
    model = BiLSTMAttentionForQuestionAnswering(
        BiLSTMAttentionConfig(vocab_size=40, embedding_dim=16, hidden_size=16, num_layers=2)
    ).eval()
    short, long = torch.randint(1, 40, (1, 9)), torch.randint(1, 40, (1, 17))
    types = (torch.arange(17) >= 5).long().expand(2, 17)  # question, then context
    ids = torch.zeros(2, 17, dtype=torch.long)
    ids[0, :9], ids[1] = short[0], long[0]
    mask = torch.zeros(2, 17, dtype=torch.long)
    mask[0, :9], mask[1] = 1, 1
    with torch.no_grad():
        alone = model(input_ids=short, attention_mask=torch.ones_like(short),
                      token_type_ids=types[:1, :9])  # fmt: skip
        batched = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(batched.start_logits[0, :9], alone.start_logits[0])
    torch.testing.assert_close(batched.end_logits[0, :9], alone.end_logits[0])

"""An LSTM with attention for extractive QA, from scratch: the pre-transformer baseline.

``model.architecture: bilstm_attention`` builds :class:`BiLSTMAttentionForQuestionAnswering`:
token embeddings (random, or copied from a pretrained model's input embeddings), a shared
bidirectional LSTM over the question-and-context window, BiDAF-style context-to-question
attention (each context token attends over the question tokens), a modelling BiLSTM over
``[c; c2q; c * c2q]``, and start / end heads. It reads the windows the extractive task builds
for any tokenizer (question and context told apart by ``token_type_ids`` where the tokenizer
gives them), so SQuAD 2.0's no-answer option is the same position as for the transformers
(the window's first token, or its last for tokenizers without a CLS token).

Every LSTM reads each window packed to its own length (``attention_mask``; batches are
right-padded), so a window's logits do not depend on the other windows of its batch: the
backward direction starts at the window's last real token, not at the batch's padding.

It is a ``transformers`` ``PreTrainedModel``, so the loop, the checkpoints
(``save_pretrained``) and the size accounting (``get_memory_footprint``) treat it as any
other; its output has ``loss``, ``start_logits`` and ``end_logits`` like a QA head's.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import QuestionAnsweringModelOutput

__all__ = ["BiLSTMAttentionConfig", "BiLSTMAttentionForQuestionAnswering"]


def _packed(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``lstm`` over each right-padded row's first ``lengths`` steps; zeros past them."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


class BiLSTMAttentionConfig(PretrainedConfig):
    model_type = "qa_ray_bilstm_attention"

    def __init__(
        self,
        vocab_size: int = 30522,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.1,
        pad_token_id: int = 0,
        **kwargs,
    ):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout


class BiLSTMAttentionForQuestionAnswering(PreTrainedModel):
    config_class = BiLSTMAttentionConfig
    base_model_prefix = "bilstm"

    def __init__(self, config: BiLSTMAttentionConfig):
        super().__init__(config)
        h = config.hidden_size
        self.embeddings = nn.Embedding(
            config.vocab_size, config.embedding_dim, padding_idx=config.pad_token_id
        )
        self.encoder = nn.LSTM(
            config.embedding_dim, h, num_layers=config.num_layers, batch_first=True,
            bidirectional=True, dropout=config.dropout if config.num_layers > 1 else 0.0,
        )  # fmt: skip
        # BiDAF's trilinear similarity w . [c; q; c * q], as its three terms (no L x L x 6h
        # tensor): w_c . c_i + w_q . q_j + (w_cq * c_i) . q_j
        self.sim_c = nn.Linear(2 * h, 1)
        self.sim_q = nn.Linear(2 * h, 1, bias=False)
        self.sim_cq = nn.Parameter(torch.zeros(2 * h))
        self.modelling = nn.LSTM(6 * h, h, batch_first=True, bidirectional=True)
        self.end_lstm = nn.LSTM(2 * h, h, batch_first=True, bidirectional=True)
        self.start = nn.Linear(2 * h, 1)
        self.end = nn.Linear(4 * h, 1)
        self.dropout = nn.Dropout(config.dropout)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput:
        mask = attention_mask.bool() if attention_mask is not None else input_ids.ne(-1)
        # without segment ids every token is context and question alike
        question = mask & token_type_ids.eq(0) if token_type_ids is not None else mask
        # right-padded windows: a row's real tokens are its first `lengths`
        lengths = mask.sum(dim=1).clamp(min=1)
        x = self.dropout(self.embeddings(input_ids))
        enc = _packed(self.encoder, x, lengths)  # (B, L, 2h)
        enc = self.dropout(enc)
        # similarity of every (context token i, question token j)
        scores = (
            self.sim_c(enc)  # (B, L, 1)
            + self.sim_q(enc).transpose(1, 2)  # (B, 1, L)
            + (enc * self.sim_cq) @ enc.transpose(1, 2)  # (B, L, L)
        )
        scores = scores.masked_fill(~question.unsqueeze(1), torch.finfo(scores.dtype).min)
        c2q = torch.softmax(scores, dim=-1) @ enc  # (B, L, 2h)
        g = torch.cat([enc, c2q, enc * c2q], dim=-1)
        m1 = _packed(self.modelling, self.dropout(g), lengths)
        m2 = _packed(self.end_lstm, m1, lengths)
        start_logits = self.start(m1).squeeze(-1)
        end_logits = self.end(torch.cat([m1, m2], dim=-1)).squeeze(-1)
        neg = torch.finfo(start_logits.dtype).min / 2
        start_logits = start_logits.masked_fill(~mask, neg)
        end_logits = end_logits.masked_fill(~mask, neg)
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[1]  # as transformers' QA heads: out of range ignored
            ce = nn.CrossEntropyLoss(ignore_index=ignored)
            loss = (
                ce(start_logits, start_positions.clamp(0, ignored))
                + ce(end_logits, end_positions.clamp(0, ignored))
            ) / 2
        return QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits
        )

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.1)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

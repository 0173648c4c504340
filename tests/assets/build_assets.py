"""Rebuilds the tiny test assets in this folder (committed; run only to change them).

    python tests/assets/build_assets.py ../shared/data/squad [../shared/data/alpaca]

Writes:
  squad_v1_tiny.json   4 articles x 2 paragraphs of SQuAD v1.1 dev, official format
  squad_v2_tiny.json   3 articles x 2 paragraphs of SQuAD 2.0 dev, official format
  squad_flat_tiny.jsonl  the v1.1 slice in the flat hub schema (JSON lines)
  alpaca_tiny.json     the first 48 short Alpaca records (instruction + input + output under
                       400 characters), CC BY-NC 4.0 like the Stanford Alpaca data
  wordpiece/           a 2,000-token BERT-style WordPiece tokenizer trained on SQuAD v1.1 dev
  bpe/                 a 2,000-token byte-level BPE tokenizer (Llama/GPT style) trained on the same
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).parent


def _slice(data, n_articles, n_paragraphs):
    return {
        "version": data["version"],
        "data": [
            {"title": a["title"], "paragraphs": a["paragraphs"][:n_paragraphs]}
            for a in data["data"][:n_articles]
        ],
    }


def _texts(data):
    for a in data["data"]:
        for p in a["paragraphs"]:
            yield p["context"]
            for qa in p["qas"]:
                yield qa["question"]


def main(squad_dir: str) -> None:
    with gzip.open(Path(squad_dir) / "dev-v1.1.json.gz", "rt", encoding="utf-8") as f:
        v1 = json.load(f)
    with gzip.open(Path(squad_dir) / "dev-v2.0.json.gz", "rt", encoding="utf-8") as f:
        v2 = json.load(f)
    tiny_v1 = _slice(v1, 4, 2)
    (HERE / "squad_v1_tiny.json").write_text(json.dumps(tiny_v1, indent=1))
    (HERE / "squad_v2_tiny.json").write_text(json.dumps(_slice(v2, 3, 2), indent=1))
    with open(HERE / "squad_flat_tiny.jsonl", "w") as f:
        for a in tiny_v1["data"]:
            for p in a["paragraphs"]:
                for qa in p["qas"]:
                    rec = {
                        "id": qa["id"],
                        "title": a["title"],
                        "context": p["context"],
                        "question": qa["question"],
                        "answers": {
                            "text": [x["text"] for x in qa["answers"]],
                            "answer_start": [x["answer_start"] for x in qa["answers"]],
                        },
                    }
                    f.write(json.dumps(rec) + "\n")

    texts = list(_texts(v1))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=specials)
    )
    cls, sep = wp.token_to_id("[CLS]"), wp.token_to_id("[SEP]")
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    wp.decoder = decoders.WordPiece()
    PreTrainedTokenizerFast(
        tokenizer_object=wp,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    ).save_pretrained(HERE / "wordpiece")

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=2000,
            special_tokens=["<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    bos = bpe.token_to_id("<s>")
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", bos)]
    )
    bpe.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=2048,
    ).save_pretrained(HERE / "bpe")


def alpaca(alpaca_dir: str, n: int = 48, max_chars: int = 400) -> None:
    with gzip.open(Path(alpaca_dir) / "alpaca_data.json.gz", "rt", encoding="utf-8") as f:
        records = json.load(f)
    short = [
        r for r in records if sum(len(r[k]) for k in ("instruction", "input", "output")) < max_chars
    ]
    (HERE / "alpaca_tiny.json").write_text(json.dumps(short[:n], indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/squad")
    alpaca(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/alpaca")

"""Weight footprint of T5-base as qa-ray builds it: FP32 full, LoRA, INT8 + LoRA, NF4 QLoRA.

Builds a random-init T5-base from its published architecture (sizes do not depend on the
weights, and no hub is needed), loads it through ``qa_ray.models.build_model`` in each
configuration and prints the footprint (``get_memory_footprint``: weights and buffers) beside the
seed report's figures. CPU is enough (bitsandbytes quantizes on CPU).

    .venv/bin/python benchmarks/t5_base_footprint.py

It takes no arguments: any is refused in one line on stderr, exit 2, before torch is imported.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bad_input import OneLineParser  # noqa: E402

# google-t5/t5-base's config.json.
T5_BASE = dict(
    vocab_size=32128,
    d_model=768,
    d_kv=64,
    d_ff=3072,
    num_layers=12,
    num_decoder_layers=12,
    num_heads=12,
    relative_attention_num_buckets=32,
    feed_forward_proj="relu",
    tie_word_embeddings=True,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)
# (label, finetune, bits, seed-report MB)
CONFIGS = [
    ("FP32 full fine-tune", "full", 32, 850),
    ("LoRA (fp32 base)", "lora", 32, 900),
    ("INT8 + LoRA", "lora", 8, 212),
    ("QLoRA (NF4 + LoRA)", "lora", 4, 300),
]


def main(argv: list[str] | None = None) -> int:
    OneLineParser(prog="t5_base_footprint.py", description=__doc__.splitlines()[0]).parse_args(argv)
    import torch  # after the arguments: a refusal does not wait for torch
    from transformers import AutoModelForSeq2SeqLM, T5Config

    from qa_ray.config.trial import ModelConfig
    from qa_ray.models.build import build_model, model_size

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        AutoModelForSeq2SeqLM.from_config(T5Config(**T5_BASE)).save_pretrained(folder)
        rows = []
        for label, finetune, bits, seed_mb in CONFIGS:
            cfg = ModelConfig(
                name_or_path=folder,
                task="seq2seq",
                finetune=finetune,
                quantization_bits=bits,
                lora={"r": 16},
            )
            model = build_model(cfg, torch.device("cpu"), AutoModelForSeq2SeqLM)
            size = model_size(model)
            rows.append((label, size, seed_mb))
            print(f"built {label}", file=sys.stderr, flush=True)
            del model
    base = rows[0][1].footprint_mb
    print(f"{'configuration':22}  {'weights MB':>10}  {'vs FP32':>7}  {'trainable':>11}  seed MB")
    for label, size, seed_mb in rows:
        print(
            f"{label:22}  {size.footprint_mb:10.1f}  {size.footprint_mb / base:7.2f}  "
            f"{size.trainable_params:11,d}  {seed_mb}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Models: building what a trial trains, and the smaller models qa-ray can make.

- :mod:`.build`: tokenizer and model from ``model`` (hub id or folder), quantization
  (bitsandbytes 8/4-bit), LoRA (peft), layers kept, dropout, size accounting;
- :mod:`.pruning`: attention heads and feed-forward units removed by measured importance;
- :mod:`.lstm`: the BiLSTM-with-attention extractive baseline.

May import layers 0-3 (config, tasks, data, ...).
"""

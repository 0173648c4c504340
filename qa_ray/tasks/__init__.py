"""Task families: the contract every family module satisfies, and the registry of families.

A family is a module (``qa_ray.tasks.extractive``, ``generative``, ``seq2seq``,
``instruction``) that defines every member of :class:`TaskFamily`. The training loop, the model
builders and the report look a family up in :data:`TASKS` by ``model.task`` and use only these
members, so a new family is a new module plus one line in ``_MODULES``. The contract is written
down to be read and type-checked, not as a base class: families share code by importing it
(seq2seq evaluates with the generative family's functions).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    import contextlib

    import torch
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from qa_ray.config import DataConfig

    #: The model a family trains and evaluates: a ``transformers`` model, or a peft model
    #: wrapping one (which forwards the same calls and attributes).
    Model = PreTrainedModel
    Tokenizer = PreTrainedTokenizerBase
    #: ``Precision.autocast``: a fresh autocast context (or a null one) per call.
    Autocast = Callable[[], contextlib.AbstractContextManager]
    Collate = Callable[[list[dict]], dict[str, torch.Tensor]]

__all__ = ["TASKS", "EvalOutput", "TaskFamily"]


@dataclass(frozen=True)
class EvalOutput:
    """What a family's ``evaluate`` returns.

    Attributes:
        predictions: ``{question id: answer}`` (instruction: ``{question: answer}`` for the
            qualitative questions).
        scores: the family's scores without the ``eval_`` prefix (``exact``, ``f1``, ...;
            ``loss``, ``perplexity``); keys ending in ``total`` are counts, not reported.
        latency_ms_per_example: evaluation wall time per example.
    """

    predictions: dict[str, str]
    scores: dict[str, float | int]
    latency_ms_per_example: float


class TaskFamily(Protocol):
    """The members of a task-family module."""

    #: The ``transformers`` auto class that builds the model (``AutoModelForQuestionAnswering``).
    AUTO_CLASS: str
    #: peft's ``TaskType`` name for LoRA (which wrapper, and which head peft keeps trainable).
    PEFT_TASK_TYPE: str
    #: Heads created fresh for the task: never quantized, always trained in full precision.
    FRESH_HEADS: tuple[str, ...]
    #: Questions every evaluation answers for a side-by-side read (empty: none).
    QUALITATIVE_QUESTIONS: tuple[str, ...]
    #: The scores ``evaluate`` returns, reported as ``eval_<score>`` (what objectives may use).
    SCORES: tuple[str, ...]

    def load_train_eval(self, cfg: DataConfig) -> tuple[Sequence[Any], Sequence[Any]]:
        """Train and held-out examples as ``cfg`` says (raises ``DataError`` on bad data)."""
        ...

    def train_features(
        self, examples: Sequence[Any], tokenizer: Tokenizer, cfg: DataConfig
    ) -> Dataset:
        """Tokenized training rows, each a dict the collator batches."""
        ...

    def eval_features(
        self, examples: Sequence[Any], tokenizer: Tokenizer, cfg: DataConfig
    ) -> Dataset:
        """Tokenized evaluation rows (with what ``evaluate`` needs to map them back)."""
        ...

    def collator(self, tokenizer: Tokenizer) -> Collate:
        """Batches training rows into model inputs and labels."""
        ...

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean training loss of a batch (``model`` may be wrapped in DDP)."""
        ...

    def outputs(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The loss and the logits knowledge distillation matches (rows: the distributions
        over the last dimension; a teacher's and a student's line up on the same batch)."""
        ...

    def evaluate(
        self,
        model: Model,
        examples: Sequence[Any],
        features: Dataset,
        tokenizer: Tokenizer,
        cfg: DataConfig,
        device: torch.device,
        batch_size: int,
        autocast: Autocast,
    ) -> EvalOutput:
        """Scores the model on the held-out examples (in eval mode, without gradients)."""
        ...


_MODULES = {
    "extractive": "qa_ray.tasks.extractive",
    "generative": "qa_ray.tasks.generative",
    "seq2seq": "qa_ray.tasks.seq2seq",
    "instruction": "qa_ray.tasks.instruction",
}


class _Registry(Mapping[str, TaskFamily]):
    """``model.task`` -> family module, imported on first use (the driver needs no torch)."""

    def __getitem__(self, name: str) -> TaskFamily:
        if name not in _MODULES:
            raise KeyError(f"unknown task {name!r}, expected one of {sorted(_MODULES)}")
        return cast(TaskFamily, importlib.import_module(_MODULES[name]))

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


#: Every task family by its ``model.task`` name.
TASKS: Mapping[str, TaskFamily] = _Registry()

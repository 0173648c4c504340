"""Task families: the contract every family module satisfies, and the registry of families.

A family is a module (``qa_ray.tasks.extractive``, ``generative``, ``seq2seq``,
``instruction``) that defines every member of :class:`TaskFamily`. The training loop, the model
builders and the report look a family up in :data:`TASKS` by ``model.task`` and use only these
members, so a new family is a new module plus one line in ``_MODULES``. The contract is written
down to be read and type-checked, not as a base class: families share code by importing it
(seq2seq evaluates with the generative family's functions). What the driver needs of a family
(its scores, its qualitative questions, its data loader) is in :data:`FACTS`, readable without
importing the family and torch with it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

# torch-free: the driver validates local data with these loaders
from qa_ray.data.instructions import load_instruction_train_eval
from qa_ray.data.squad import load_train_eval

if TYPE_CHECKING:
    import contextlib

    import torch
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from qa_ray.config.trial import DataConfig

    #: The model a family trains and evaluates: a ``transformers`` model, or a peft model
    #: wrapping one (which forwards the same calls and attributes).
    Model = PreTrainedModel
    Tokenizer = PreTrainedTokenizerBase
    #: ``Precision.autocast``: a fresh autocast context (or a null one) per call.
    Autocast = Callable[[], contextlib.AbstractContextManager]
    Collate = Callable[[list[dict]], dict[str, torch.Tensor]]

__all__ = ["FACTS", "TASKS", "EvalOutput", "FamilyFacts", "TaskFamily"]


@dataclass(frozen=True)
class EvalOutput:
    """What a family's ``evaluate`` returns.

    Attributes:
        predictions: ``{question id: answer}`` (instruction: ``{question: answer}`` for the
            qualitative questions).
        scores: the family's scores without the ``eval_`` prefix (``exact``, ``f1``, ...;
            ``loss``, ``perplexity``); keys ending in ``total`` are counts, not reported.
        latency_ms_per_example: evaluation wall time per example.
        per_question: QA families: ``{question id: (exact, f1)}`` (0 to 1), as scored.
    """

    predictions: dict[str, str]
    scores: dict[str, float | int]
    latency_ms_per_example: float
    per_question: dict[str, tuple[float, float]] | None = None


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


@dataclass(frozen=True)
class FamilyFacts:
    """What the driver reads of a family without importing it: a family module imports torch,
    and the driver validates a sweep and writes its report without torch (importing it cost a
    second and a half of a sweep's start). The family modules take these members from here.

    Attributes:
        scores: the family's ``SCORES``.
        load_train_eval: the family's ``load_train_eval`` (a :mod:`qa_ray.data` function).
        qualitative_questions: the family's ``QUALITATIVE_QUESTIONS``.
    """

    scores: tuple[str, ...]
    load_train_eval: Callable[[DataConfig], tuple[Sequence[Any], Sequence[Any]]]
    qualitative_questions: tuple[str, ...] = ()


_SQUAD_SCORES = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1")

#: Every family's :class:`FamilyFacts` by its ``model.task`` name.
FACTS: Mapping[str, FamilyFacts] = {
    "extractive": FamilyFacts(_SQUAD_SCORES, load_train_eval),
    "generative": FamilyFacts(_SQUAD_SCORES, load_train_eval),
    "seq2seq": FamilyFacts(_SQUAD_SCORES, load_train_eval),
    "instruction": FamilyFacts(
        ("loss", "perplexity"),
        load_instruction_train_eval,
        # The seed's qualitative set: every finished trial's model answers these, logged side
        # by side.
        qualitative_questions=(
            "What is the capital of Australia?",
            "Explain the theory of relativity in simple terms.",
            "Write a Python function that returns the sum of two vectors.",
            "Give three tips for staying healthy.",
            "Translate 'Good morning, how are you?' into French.",
            "What are the main causes of climate change?",
            "Summarize the plot of Romeo and Juliet in two sentences.",
            "What is the difference between a list and a tuple in Python?",
            "Who painted the Mona Lisa?",
            "Explain what a neural network is to a ten-year-old.",
            "Write a haiku about autumn.",
            "How many days are there in a leap year?",
            "Suggest a name for a coffee shop near a university.",
            "What do you think is the future of artificial intelligence?",
        ),
    ),
}

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

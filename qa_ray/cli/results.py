"""``qa-ray score`` and ``qa-ray pareto``: predictions scored, a finished sweep's front read back.

qa-ray score dev-v2.0.json.gz predictions.json [--na-prob na_prob.json]
qa-ray pareto quickstart --format json > front.json
qa-ray pareto quickstart --budgets 1500 --publish

``qa-ray pareto`` reads and writes nothing else by default; ``--publish`` writes the report to
MLflow as the sweep's end does (tags, ``pareto/`` artifacts, a comparison run for several).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys

from qa_ray.cli.codes import EXIT_OK
from qa_ray.errors import ConfigError


def cmd_score(args) -> int:
    from qa_ray.data.examples import DataError, read_json
    from qa_ray.data.squad import gold_questions, load_examples
    from qa_ray.scoring.squad import score

    questions = gold_questions(load_examples(args.dataset))
    preds = read_json(args.predictions)
    if not isinstance(preds, dict):
        raise DataError(
            args.predictions,
            [
                f"expected a JSON object {{question_id: answer_text}}, but got a {type(preds).__name__}"
            ],
        )
    bad = [
        f"`{k}`: answer must be a string, but got {v!r}"
        for k, v in preds.items()
        if not isinstance(v, str)
    ]
    if bad:
        raise DataError(args.predictions, bad[:25])
    na_probs = None
    if args.na_prob:
        na_probs = read_json(args.na_prob)
        if not isinstance(na_probs, dict):
            raise DataError(
                args.na_prob,
                [
                    "expected a JSON object {question_id: no-answer probability}, but got a "
                    f"{type(na_probs).__name__}"
                ],
            )
        bad = [
            f"`{k}`: probability must be a number, but got {v!r}"
            for k, v in na_probs.items()
            if isinstance(v, bool) or not isinstance(v, int | float)
        ]
        known = {q.id for q in questions}
        bad += [
            f"`{k}`: predicted, but has no no-answer probability"
            for k in preds
            if k in known and k not in na_probs
        ]
        if bad:
            raise DataError(args.na_prob, bad[:25])
    report = score(questions, preds, na_probs, args.na_prob_thresh if na_probs else None)
    if report.missing:
        print(
            f"warning: {len(report.missing)} question(s) have no prediction and score 0 "
            f"(first: {report.missing[0]})",
            file=sys.stderr,
        )
    if report.unknown:
        print(
            f"warning: {len(report.unknown)} prediction(s) for unknown question ids are ignored "
            f"(first: {report.unknown[0]})",
            file=sys.stderr,
        )
    print(json.dumps(report.scores, indent=2))
    return EXIT_OK


def summary_json(summary) -> str:
    """The Pareto summary as one JSON object: every trial (``pareto_optimal``,
    ``pareto_rank``, its configuration and metrics), the front's trial names, the best trial
    under each budget, the hypervolume by trial. Non-finite numbers become ``null``."""

    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [finite(x) for x in v]
        return v

    out = dataclasses.asdict(summary)
    out["objectives"] = [{"metric": k, "mode": mode} for k, mode in summary.objectives]
    out["front"] = [summary.trials[i].get("name") for i in summary.optimal]
    return json.dumps(finite(out), indent=2, default=str)


def cmd_pareto(args) -> int:

    from qa_ray.pareto import parse_constraint
    from qa_ray.report.publish import publish_comparison, publish_pareto
    from qa_ray.report.summary import sweep_constraints
    from qa_ray.report.tables import budget_lines, trials_table
    from qa_ray.sweep.config import OBJECTIVE_METRICS
    from qa_ray.tracking.runs import find_parent_run, resolve_tracking_uri

    # Checked before reading MLflow: every error at once, exit 2.
    errors = []
    for flag, metric in (("--y", args.y), ("--x", args.x)):
        if metric is not None and metric not in OBJECTIVE_METRICS:
            errors.append(f"`{flag}`: unknown metric {metric!r}, expected one of "
                          f"{list(OBJECTIVE_METRICS)}")  # fmt: skip
    for text in args.constraint or []:
        try:
            c = parse_constraint(text)
        except ValueError as exc:
            errors.append(f"`--constraint`: {exc}")
            continue
        if c.metric not in OBJECTIVE_METRICS:
            errors.append(f"`--constraint`: unknown metric {c.metric!r} in {text!r}")
    if errors:
        raise ConfigError("command line", errors)
    uri = resolve_tracking_uri(None, args.tracking_uri)
    parents = [find_parent_run(uri, s) for s in args.sweep_or_run]
    constraints = args.constraint or sweep_constraints(uri, parents[0])
    objectives = _objectives(args, uri, parents[0])
    # With --format json, stdout holds the JSON alone; what is said goes to stderr.
    say = sys.stderr if args.format == "json" else sys.stdout
    if not args.publish:
        summary = _read_front(uri, parents, objectives, constraints, args.budgets)
    elif len(parents) == 1:
        summary = publish_pareto(uri, parents[0], objectives, constraints, budgets=args.budgets)
    else:
        summary = publish_comparison(uri, parents, objectives, constraints, budgets=args.budgets)
        print(
            f"[qa-ray] one front over {len(parents)} sweeps: MLflow run {summary.parent_run_id}",
            file=say,
        )
    if args.format == "json":
        print(summary_json(summary))
    else:
        print(trials_table(summary))
        for line in budget_lines(summary):
            # Read only, no best-trial YAML was written: its name would point at nothing new.
            print(f"[qa-ray] {line if args.publish else line.split(' (pareto/')[0]}")
    if not args.publish:
        print("[qa-ray] read only: nothing written to MLflow; --publish writes the report "
              "(and each best trial's YAML) there", file=say)  # fmt: skip
    return EXIT_OK


def _objectives(args, uri: str, parent_id: str):
    """The two objectives to draw: the flags', then the first sweep's own two, then F1 up and
    peak memory across; a mode not given is the objective's in the sweep, else its natural
    one (max for a score, min for the rest)."""
    from qa_ray import metrics as m
    from qa_ray.report.summary import parse_objectives
    from qa_ray.sweep.config import Objective
    from qa_ray.tracking.runs import sweep_params

    ran = parse_objectives(sweep_params(uri, parent_id).get("objectives"))
    modes = dict(ran)
    y, x = (ran[0][0], ran[1][0]) if len(ran) == 2 else ("eval_f1", "peak_memory_mb")
    y, x = args.y or y, args.x or x

    def mode(metric: str, given: str | None) -> str:
        natural = "max" if metric in m.HIGHER_IS_BETTER else "min"
        return given or modes.get(metric) or natural

    return [Objective(metric=y, mode=mode(y, args.y_mode)),
            Objective(metric=x, mode=mode(x, args.x_mode))]  # fmt: skip


def _read_front(uri, parents, objectives, constraints, budgets):
    """The front as MLflow holds it, nothing written: one sweep's, against the hypervolume
    reference it was logged with; several sweeps', each a family (``parent_run_id`` None)."""
    from qa_ray.pareto import parse_constraint
    from qa_ray.report.summary import summarize
    from qa_ray.tracking import runs as tracking

    objs = [(o.metric, o.mode) for o in objectives]
    parsed = [parse_constraint(c) for c in constraints]
    if len(parents) == 1:
        records = tracking.trial_records(uri, parents[0])
        reference = tracking.hypervolume_reference(uri, parents[0])
        return summarize(parents[0], records, objs, parsed, budgets, reference=reference)
    records = [r for p in parents for r in tracking.trial_records(uri, p)]
    for r in records:
        r["family"] = r["sweep"]
    return summarize(None, records, objs, parsed, budgets)

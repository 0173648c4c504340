"""``qa-ray best`` and ``qa-ray export``: a sweep's winning configuration, or its weights, on disk.

qa-ray best quickstart --out best/
qa-ray export quickstart --out winner/ --merge
qa-ray export quickstart --trial trial_3 --out trial_3/

Both read MLflow and write nothing there.
"""

from __future__ import annotations

from qa_ray.cli.codes import EXIT_OK


def cmd_best(args) -> int:
    from qa_ray.report.export import pick_trial, write_config
    from qa_ray.tracking.runs import resolve_tracking_uri

    uri = resolve_tracking_uri(None, args.tracking_uri)
    winner = pick_trial(uri, args.sweep_or_run, trial=args.trial, under=args.under)
    path = write_config(uri, winner, args.out)
    print(f"[qa-ray] {winner.trial['name']} ({winner.why}): {path}")
    print(f"[qa-ray] retrain it: qa-ray train {path}")
    return EXIT_OK


def cmd_export(args) -> int:
    from qa_ray.report.export import export_weights, pick_trial
    from qa_ray.tracking.runs import resolve_tracking_uri

    uri = resolve_tracking_uri(None, args.tracking_uri)
    winner = pick_trial(uri, args.sweep_or_run, trial=args.trial, under=args.under)
    out = export_weights(uri, winner, args.out, merge=args.merge)
    print(f"[qa-ray] {winner.trial['name']} ({winner.why}): its checkpoint in {out}")
    return EXIT_OK

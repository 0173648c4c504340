"""``qa-ray submit`` and ``qa-ray job``: a sweep as a Ray job, with the options named as
Ray's own job CLI names them (``--submission-id``, ``--no-wait``, ``--follow``).

    qa-ray submit sweeps/quickstart.yaml --address http://127.0.0.1:8265 --no-wait
    qa-ray job logs qa-ray-quickstart-20261122-101500 --follow
"""

from __future__ import annotations

import sys

from qa_ray.cli.codes import EXIT_FAILED, EXIT_OK


def cmd_submit(args) -> int:
    from qa_ray.sweep import jobs

    job_id = jobs.submit(
        args.sweep,
        args.overrides,
        args.address,
        tracking_uri=args.tracking_uri,
        working_dir=args.working_dir,
        submission_id=args.submission_id,
    )
    print(f"[qa-ray] submitted job {job_id} to {args.address}", flush=True)
    print(
        f"[qa-ray] follow: qa-ray job logs {job_id} --follow --address {args.address}\n"
        f"[qa-ray] stop:   qa-ray job stop {job_id} --address {args.address}",
        flush=True,
    )
    if args.no_wait:
        return EXIT_OK
    return _follow(args.address, job_id)


def _follow(address: str, job_id: str) -> int:
    from qa_ray.sweep import jobs

    try:
        status = jobs.follow(address, job_id)
    except KeyboardInterrupt:
        print(
            f"\n[qa-ray] detached; job {job_id} goes on (qa-ray job status {job_id} "
            f"--address {address})",
            file=sys.stderr,
        )
        return EXIT_OK
    print(f"[qa-ray] job {job_id}: {status}")
    return EXIT_OK if status == "SUCCEEDED" else EXIT_FAILED


def cmd_job(args) -> int:
    from qa_ray.sweep import jobs

    if args.action == "status":
        status, message = jobs.job_status(args.address, args.job_id)
        print(f"{args.job_id}: {status}" + (f" ({message})" if message else ""))
        return EXIT_OK
    if args.action == "logs":
        if args.follow:
            return _follow(args.address, args.job_id)
        print(jobs.job_logs(args.address, args.job_id), end="")
        return EXIT_OK
    stopped = jobs.stop_job(args.address, args.job_id)
    print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return EXIT_OK

"""The exit codes every subcommand shares, and what they mean (shown by ``qa-ray --help``)."""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

EXIT_CODES = """\
exit codes:
  0    ok (a sweep: at least one trial completed; with --strict, none failed)
  1    the run itself failed (a sweep: no trial completed; a job that did not succeed)
  2    bad input (command line, config, data, predictions), before any Ray work: the message
       names the file, the field and the value
  130  a sweep interrupted by SIGINT (Ctrl-C), its state saved: the printed --resume command
       continues it
  143  the same, by SIGTERM (`qa-ray job stop`, a preempted head node)"""

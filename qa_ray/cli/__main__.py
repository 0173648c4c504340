"""``python -m qa_ray.cli``: the ``qa-ray`` program (what a Ray job runs on the head node)."""

from __future__ import annotations

import sys

from qa_ray.cli.app import main

sys.exit(main())

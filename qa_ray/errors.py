"""Bad user input as one exception: :class:`ConfigError` names the file and lists every problem.

Raised by validation everywhere (config, sweep and data files, predictions); the CLI turns it
into exit code 2 before any cluster work starts.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """Bad user input: a config, data or predictions file. The CLI exits with code 2.

    Args:
        source: the file (or ``"command line"``) the errors come from.
        errors: every problem found, each naming the field, the rule and the value.
    """

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        n = len(self.errors)
        super().__init__(f"{source}: {n} error{'s' if n != 1 else ''}\n{lines}")

    def __reduce__(self):  # crosses Ray process boundaries
        return (self.__class__, (self.source, self.errors))

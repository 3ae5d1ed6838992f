"""Checks and messages the image, audio and video datasets share."""
from __future__ import annotations

import warnings


def check_count(cfg, name: str, low: int, error: type[Exception]) -> None:
    """[data] name must be an integer >= low (a bool is not one)."""
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise error(f"[data] {name} must be an integer >= {low}, got {v!r}")


def warn_skipped(skipped: list[tuple[str, str]], what: str, stacklevel: int) -> None:
    """One warning for all the files a data.on_error = "skip" build left out: the first three with
    their reasons, and where the rest are. stacklevel counts from the caller of warn_skipped."""
    if not skipped:
        return
    first = "; ".join(f"'{p}' ({r})" for p, r in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    warnings.warn(f"skipped {len(skipped)} {what}: {first}{more}. They are listed in dataset.skipped; "
                  f"set data.on_error = \"raise\" to stop at the first one", stacklevel=stacklevel + 1)

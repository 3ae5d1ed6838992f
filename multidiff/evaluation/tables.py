"""The one writer of evaluation tables: rows of numbers -> eval.json + a markdown table (eval.md)."""
from __future__ import annotations

import statistics
from pathlib import Path

from ..utils import write_json, write_text


def check_repeats(repeats: int) -> None:
    """eval.repeats: a whole number of draws per row."""
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"eval.repeats must be a whole number >= 1 (draws per table row), got {repeats!r}")


def mean_over_draws(draws: list[dict]) -> dict:
    """One table row from the scores of several draws of a row (eval.repeats: seeds seed, seed + 1, ...): each
    number's mean, and with two or more draws its sample standard deviation as `<key>_sd` (the spread a gap
    between two rows must exceed to mean anything), `draws`, their count, and `by_draw`, each draw's scores
    (seeds are shared by every model evaluated, so two models' draws pair up). Other values: the first draw's."""
    row = dict(draws[0])
    for k, v in draws[0].items():
        if isinstance(v, float):
            vals = [float(d[k]) for d in draws]
            row[k] = statistics.fmean(vals)
            if len(vals) > 1:
                row[f"{k}_sd"] = statistics.stdev(vals)
    if len(draws) > 1:
        row["draws"], row["by_draw"] = len(draws), [dict(d) for d in draws]
    return row


def markdown_table(rows: list[dict], columns: dict[str, str | tuple[str, str]]) -> str:
    """One markdown row per dict, one column per `columns` entry (key -> header, or (header, format));
    numbers are formatted (".3f" unless a format is given), text and integers written as they are, "-"
    where a row lacks the key. A column no row has is left out (e.g. PESQ without the `eval` extra)."""
    spec = {k: (v, ".3f") if isinstance(v, str) else v for k, v in columns.items()}
    keys = [k for k in spec if any(k in r for r in rows)]

    def cell(r: dict, k: str) -> str:
        v = r.get(k, "-")
        return format(v, spec[k][1]) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(spec[k][0] for k in keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r, k) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_result(run_dir, result: dict, markdown: str, name: str = "eval") -> dict:
    """RUN/<name>.json and RUN/<name>.md (default eval.json, eval.md); returns the stage's summary."""
    path = Path(run_dir) / f"{name}.json"
    write_json(path, result)
    write_text(Path(run_dir) / f"{name}.md", markdown)
    return {name: str(path)}

"""``report.html``: one self-contained, offline page (no script, no CDN, no web font).

Rendered with Jinja2 from ``templates/report.html.j2`` (autoescaped: prompt texts and model
outputs are data, never markup). The plot is inline SVG drawn by the template's macros from the
cells computed here: one row per prompt, one column per concurrency level, each cell coloured by
the first token at which that prompt parted from the concurrency-1 baseline at that level (dark
red early, yellow late), green where it never did, blue where only the logprobs differed.

Why SVG from the template and not a plotting library: the plot is a grid of rectangles with a
legend, and a library's SVG carries generator ids, dates and hash salts that would make two
identical checks write different bytes; here the page is a function of the report alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import jinja2

if TYPE_CHECKING:
    from detserve.diagnosis.check import CheckResult

IDENTICAL: Final = "#2e7d32"
LOGPROBS_ONLY: Final = "#1565c0"
CELL: Final = 22
LABEL_WIDTH: Final = 180


def divergence_colour(token_index: int, max_tokens: int) -> str:
    """Dark red at token 0 through orange to yellow at the last token."""
    share = min(1.0, token_index / max(1, max_tokens - 1))
    red, green, blue = 183 + round(72 * share), round(28 + 207 * share), round(28 + 31 * share)
    return f"#{red:02x}{green:02x}{blue:02x}"


@dataclass(frozen=True)
class Cell:
    x: int
    y: int
    fill: str
    title: str


def plot_cells(result: CheckResult) -> list[Cell]:
    """The plot's cells, rows = prompts, columns = concurrency levels."""
    diagnosis = result.diagnosis
    measurements = result.measurements
    if measurements is None:
        return []
    logprob_only = {
        (d.prompt_index, d.key.concurrency) for d in diagnosis.divergences if d.kind == "logprobs"
    }
    cells = []
    for column, level in enumerate(diagnosis.levels):
        for row, token in enumerate(level.first_divergent_token):
            prompt_id = measurements.prompt_ids[row]
            if token is None:
                fill, title = (
                    IDENTICAL,
                    f"{prompt_id} at concurrency {level.concurrency}: identical",
                )
            elif (row, level.concurrency) in logprob_only:
                fill = LOGPROBS_ONLY
                title = (
                    f"{prompt_id} at concurrency {level.concurrency}: logprobs differ "
                    f"from token {token}"
                )
            else:
                fill = divergence_colour(token, result.plan.max_tokens)
                title = (
                    f"{prompt_id} at concurrency {level.concurrency}: first divergent token {token}"
                )
            cells.append(Cell(LABEL_WIDTH + column * CELL, 30 + row * CELL, fill, title))
    return cells


_ENVIRONMENT: Final = jinja2.Environment(
    loader=jinja2.PackageLoader("detserve.diagnosis", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_report_html(report: dict[str, object], result: CheckResult) -> str:
    """The page for ``report`` (report.json's document) and the result it was built from."""
    template = _ENVIRONMENT.get_template("report.html.j2")
    levels = [level.concurrency for level in result.diagnosis.levels]
    prompt_ids = list(result.measurements.prompt_ids) if result.measurements else []
    legend = [
        (IDENTICAL, "identical to concurrency 1"),
        (divergence_colour(0, result.plan.max_tokens), "diverges at token 0"),
        (
            divergence_colour(result.plan.max_tokens - 1, result.plan.max_tokens),
            f"diverges at token {result.plan.max_tokens - 1}",
        ),
        (LOGPROBS_ONLY, "tokens equal, logprobs differ"),
    ]
    return template.render(
        report=report,
        verdict=result.diagnosis.verdict.value,
        passed=result.diagnosis.passed,
        cells=plot_cells(result),
        levels=levels,
        prompt_ids=prompt_ids,
        cell=CELL,
        label_width=LABEL_WIDTH,
        width=LABEL_WIDTH + CELL * max(1, len(levels)) + 20,
        height=40 + CELL * max(1, len(prompt_ids)),
        legend=legend,
        divergences=report["first_divergences"],
        pins=report["pins"],
        volatile=report["volatile"],
    )

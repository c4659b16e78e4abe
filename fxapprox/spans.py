"""Span lists from users → validated, sorted `(s, e)` pairs in the papers' convention.

Span `(s, e)`, `-1 <= s < e <= L-1`, removes blocks s+1..e and maps `H_s` to `H_e`; spans used
together must not overlap (`e_i <= s_j`).
"""

from __future__ import annotations

from collections.abc import Iterable

from fxapprox.errors import SpanError

__all__ = ["validate_spans", "all_spans", "parse_spans"]


def validate_spans(spans: Iterable[tuple[int, int]], num_blocks: int, units: str = "block") -> list[tuple[int, int]]:
    """Check range and overlap; return the spans sorted by start. `num_blocks` counts `units`
    (with `units="half"`, twice the blocks: unit 2k is block k's attention branch, 2k+1 its MLP)."""
    checked = []
    for span in spans:
        try:
            s, e = (int(v) for v in span)
        except (TypeError, ValueError):
            raise SpanError(f"span {span!r} is not a pair of block indices (s, e)") from None
        if not -1 <= s < e <= num_blocks - 1:
            raise SpanError(
                f"span ({s}, {e}) is out of range: need -1 <= s < e <= {num_blocks - 1} for a model "
                f"with {num_blocks} {'half-block units' if units == 'half' else 'blocks'} ((s, e) removes "
                f"{'units' if units == 'half' else 'blocks'} s+1..e; s = -1 starts at the embeddings)"
            )
        checked.append((s, e))
    if not checked:
        raise SpanError("no span given: pass spans=[(s, e), ...] or num_blocks=k")
    checked.sort()
    for (s1, e1), (s2, e2) in zip(checked, checked[1:]):
        if s2 < e1:
            raise SpanError(
                f"spans ({s1}, {e1}) and ({s2}, {e2}) overlap: spans used together need e_i <= s_j "
                "(they may touch, e.g. (2, 4) and (4, 6))"
            )
    return checked


def all_spans(num_blocks: int, max_len: int | None = None) -> list[tuple[int, int]]:
    """Every span `(s, e)` of a model with `num_blocks` blocks, optionally up to `max_len` blocks."""
    return [
        (s, e) for s in range(-1, num_blocks - 1) for e in range(s + 1, num_blocks)
        if max_len is None or e - s <= max_len
    ]


def parse_spans(text: str) -> list[tuple[int, int]]:
    """`"9-11,3-4"` (or `"9:11"`) → `[(9, 11), (3, 4)]`; `-1` is written `m1` or `-1-3`."""
    spans = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        sep = ":" if ":" in part else "-"
        head, _, tail = part[1:].partition(sep) if part.startswith("-") else part.partition(sep)
        head = "-" + head if part.startswith("-") else head
        try:
            spans.append((int(head.replace("m", "-")), int(tail)))
        except ValueError:
            raise SpanError(f"cannot read span {part!r}: write spans as s-e, e.g. '9-11,3-4'") from None
    return spans

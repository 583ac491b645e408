"""A measured figure next to its ceiling and target, and the markdown table of them."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Figure:
    section: str
    name: str
    value: float | None
    unit: str = ""
    ceiling: float | None = None
    target: str = ""
    """`ratio>=0.6`, `ratio<=1.5`, `value<=20` or `value>=200000`, several joined by
    commas (all must hold); empty for context."""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.ceiling:
            return None
        return self.value / self.ceiling

    @property
    def status(self) -> str:
        if not self.target or self.value is None:
            return ""
        oks = []
        for target in self.target.split(","):
            subject, op, limit = _parse_target(target)
            measured = self.ratio if subject == "ratio" else self.value
            if measured is None:
                return ""
            oks.append(measured >= limit if op == ">=" else measured <= limit)
        return "pass" if all(oks) else "MISS"

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ratio": self.ratio, "status": self.status}


def _parse_target(target: str) -> tuple[str, str, float]:
    for op in (">=", "<="):
        if op in target:
            subject, limit = target.split(op)
            return subject, op, float(limit)
    raise ValueError(target)


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def _target_text(target: str) -> str:
    if not target:
        return ""
    texts = []
    for one in target.split(","):
        subject, op, limit = _parse_target(one)
        sign = "≥" if op == ">=" else "≤"
        texts.append(f"ratio {sign} {limit:g}" if subject == "ratio" else f"{sign} {limit:,g}")
    return ", ".join(texts)


def markdown(figures: list[Figure]) -> str:
    lines = [
        "| section | figure | value | ceiling | ratio | target | result |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        ratio = "" if f.ratio is None else f"{f.ratio:.2f}"
        name = f.name + (f" ({f.note})" if f.note else "")
        lines.append(
            f"| {f.section} | {name} | {_number(f.value, f.unit)} | {_number(f.ceiling, f.unit)} | {ratio}"
            f" | {_target_text(f.target)} | {f.status} |"
        )
    return "\n".join(lines)

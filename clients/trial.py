"""``tunegate tune --trial [N]``: a trial run's request field and its report, in words."""

from __future__ import annotations

from typing import Any


def trial_body(trial: int | None) -> dict[str, Any]:
    """The create request's extra field: none; ``--trial`` (defaults); ``--trial N``."""
    if trial is None:
        return {}
    return {"trial": {"examples": trial} if trial else {}}


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"learns: {str(report.get('learns')).lower()} ({report.get('verdict')})",
        f"  {report.get('reason', '')}",
        f"held-out loss: {report.get('held_out_loss_before')} before, "
        f"{report.get('held_out_loss_after')} after; shuffled control "
        f"{report.get('control_held_out_loss_after')}",
        f"estimated full run: {report.get('estimated_full_run_s')} s",
    ]
    drift, repetition = report.get("drift") or {}, report.get("repetition") or {}
    if drift:
        lines.append(
            f"drift: KL {drift.get('kl')} nats/token; repetition {repetition.get('mean')} "
            f"(base {repetition.get('base_mean')})"
        )
    for sample in report.get("samples") or []:
        prompt = " / ".join(str(m.get("content")) for m in sample.get("prompt") or [])
        lines += [
            f"- {prompt}",
            f"    base:     {sample.get('base_answer')!r}",
            f"    trial:    {sample.get('trial_answer')!r}",
            f"    expected: {sample.get('expected')!r}",
        ]
    return "\n".join(lines)

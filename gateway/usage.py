"""`GET /v1/usage`: spend by client key, deployment and UTC day, read from the spend ledger."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from gateway.ledger import SpendLedger

SCOPES = {"key": "keys", "deployment": "deployments"}


def last_days(count: int, today: date | None = None) -> list[date]:
    """The `count` UTC days ending today, oldest first."""
    end = today or datetime.now(UTC).date()
    return [end - timedelta(days=offset) for offset in range(count - 1, -1, -1)]


async def usage_report(ledger: SpendLedger, days: int) -> dict[str, Any]:
    """Per day: spend by key and by deployment; and the totals over the period."""
    spend = await ledger.usage(last_days(days))
    by_day: list[dict[str, Any]] = []
    totals: dict[str, dict[str, float]] = {"keys": {}, "deployments": {}}
    for day in sorted(spend):
        row: dict[str, Any] = {"date": day.isoformat(), "keys": {}, "deployments": {}}
        for scope, usd in sorted(spend[day].items()):
            kind, _, name = scope.partition(":")
            group = SCOPES.get(kind)
            if group is None or usd == 0:
                continue
            row[group][name] = round(usd, 9)
            totals[group][name] = round(totals[group].get(name, 0.0) + usd, 9)
        row["total_usd"] = round(sum(row["deployments"].values()), 9)
        by_day.append(row)
    return {
        "object": "usage",
        "days": days,
        "total_usd": round(sum(totals["deployments"].values()), 9),
        "keys": totals["keys"],
        "deployments": totals["deployments"],
        "data": by_day,
    }

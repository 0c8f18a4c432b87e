"""`vagent stats`: usage, latency and cost from the read models (projections/analytics.py),
read from the running projection service, or straight from the DuckDB file when none runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bus.client import Bus
from bus.errors import BusError
from cli.display import Column, table
from projections.analytics import STAGES, report, window
from projections.client import QueryError, run_query
from settings.config import Config

TITLES = {"day": "day (UTC)", "assistant": "assistant", "model": "model", "user": "user",
          "transport": "transport"}


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def money_cell(value: float) -> str:
    """Four decimals; a cost below them in two significant digits, not as nothing."""
    return f"{value:.4f}" if value == 0 or value >= 0.001 else f"{value:.2g}"


def render(answer: dict[str, Any], wide: bool = False) -> str:
    """The report as a table, a total line under it, and the stage latencies overall."""
    currency = answer["currency"]

    def cells(label: str, r: dict[str, Any]) -> list[Any]:
        audio = r["latency_ms"]["first_audio"]
        return [label, r["sessions"], r["turns"], f"{r['audio_in_minutes']:.1f}",
                f"{r['audio_out_minutes']:.1f}", r["prompt_tokens"], r["completion_tokens"],
                money_cell(r["cost"]), f"{_p(audio['p50'])}/{_p(audio['p90'])}", r["interruptions"],
                r["errors"], r["tool_calls"]]

    lines = [f"{answer['since']} → {answer['until']}"]
    columns: list[str | Column] = [
        Column(TITLES[answer["by"]], 16), "sessions", "turns", "min in", "min out", "tok in", "tok out",
        f"cost {currency}", "audio p50/p90", "intr", "err", "tools"]
    rows = [cells(r["label"], r) for r in answer["rows"]]
    if len(rows) != 1:
        rows.append(cells("total", answer["totals"]))
    lines.append(table(columns, rows, wide=wide) if answer["rows"] else "no sessions in this window")
    lines.append("")
    lines.append("latency (ms)     p50     p90     p99   turns")
    for stage in STAGES:
        s = answer["totals"]["latency_ms"][stage]
        lines.append(f"{stage:<14}{_p(s['p50']):>6}  {_p(s['p90']):>6}  {_p(s['p99']):>6}  {s['count']:>6}")
    lines.append("audio p50/p90: end of the input to the answer's first audio, in ms; min: minutes of "
                 "speech heard and spoken")
    return "\n".join(lines)


async def show_stats(nats: str | None, data_dir: Path, config: Config, *, since: str, by: str,
                     user: str | None, as_json: bool, wide: bool = False) -> None:
    start, until = window(since)
    try:
        bus: Bus | None = await Bus.connect(nats, name="vagent-cli", timeout=2)
    except BusError:
        bus = None  # read the file directly

    async def query(name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            columns, rows = await run_query(bus, data_dir, name, params, fresh=bus is not None)
        except QueryError as exc:
            raise BusError(str(exc)) from None
        return [dict(zip(columns, r, strict=True)) for r in rows]

    try:
        answer = await report(query, by=by, since_ns=start, until_ns=until, user=user,
                              prices=config.prices, currency=config.telemetry.currency,
                              scope="all")
    finally:
        if bus:
            await bus.close()
    print(json.dumps(answer, ensure_ascii=False) if as_json else render(answer, wide))

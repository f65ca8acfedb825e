"""What a backtest leaves behind: hourly equity, trades, selections, stats, a printed table and a picture.

``stats`` is a plain function of the equity frame, so tests check it against pandas written out.
Every CSV float is decimal text (``shared.book.decimal_text``), as in ``alphabus paper``'s files.
"""

from __future__ import annotations

import base64
import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shared.book import decimal_text

HOURS_PER_YEAR = 24 * 365
EQUITY_COLUMNS = ("run_time", "equity", "pnl", "gross_pnl", "fees", "funding", "drawdown", "long", "short",
                  "gross", "net", "positions", "turnover")
TRADE_COLUMNS = ("run_time", "symbol", "qty", "price", "notional", "fee", "slippage", "delisted")
SELECTION_COLUMNS = ("run_time", "side", "symbol", "close", "position", "pos_val")


def write_csv(path: Path, columns: Iterable[str], rows: Iterable[dict[str, Any]]) -> None:
    columns = list(columns)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([decimal_text(row[c]) for c in columns] for row in rows)


def equity_frame(rows: list[dict[str, Any]], capital: float) -> pd.DataFrame:
    """The book's equity rows plus gross PnL (before fees and funding) and drawdown from the running peak."""
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=list(EQUITY_COLUMNS))
    df["gross_pnl"] = df["pnl"] + df["fees"] + df["funding"]
    peak = np.maximum.accumulate(np.r_[capital, df["equity"].to_numpy(float)])[1:]
    df["drawdown"] = df["equity"] / peak - 1
    return df


def stats(equity: pd.DataFrame, capital: float) -> dict[str, Any]:
    """Total and annualised return, Sharpe, maximum drawdown and its dates, turnover, fees, funding, hit rate.

    Returns are on the fixed capital (the strategy trades ``capital_usdt`` every hour, as the article does).
    """
    if equity.empty:
        return {"hours": 0}
    hourly = equity["pnl"].to_numpy(float) / capital
    hours = len(equity)
    total = float(equity["equity"].iloc[-1] / capital - 1)
    std = float(hourly.std(ddof=1)) if hours > 1 else 0.0
    trough = int(equity["drawdown"].to_numpy(float).argmin())
    values = np.r_[capital, equity["equity"].to_numpy(float)]
    peak_at = int(values[: trough + 2].argmax()) - 1  # -1: the starting capital, before the first hour
    active = equity["positions"].to_numpy() > 0
    return {
        "hours": hours,
        "start": equity["run_time"].iloc[0], "end": equity["run_time"].iloc[-1],
        "final_equity": float(equity["equity"].iloc[-1]),
        "total_return": total,
        "annualised_return": float(hourly.mean() * HOURS_PER_YEAR),
        "sharpe": float(hourly.mean() / std * math.sqrt(HOURS_PER_YEAR)) if std > 0 else None,
        "max_drawdown": float(equity["drawdown"].min()),
        "max_drawdown_peak": equity["run_time"].iloc[peak_at] if peak_at >= 0 else "start",
        "max_drawdown_trough": equity["run_time"].iloc[trough],
        "avg_hourly_turnover": float(equity["turnover"].mean() / capital),
        "fees_paid": float(equity["fees"].sum()),
        "funding_paid": float(equity["funding"].sum()),
        "hit_rate": float((equity.loc[active, "pnl"] > 0).mean()) if active.any() else None,
    }


def table(summary: dict[str, Any]) -> str:
    """The printed summary, one figure a line."""
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x * 100:+.2f}%"

    def num(x: float | None, fmt: str = ".2f") -> str:
        return "n/a" if x is None else format(x, fmt)

    if not summary.get("hours"):
        return "no hours backtested"
    lines = [
        ("hours", f"{summary['hours']} ({summary['start']} to {summary['end']})"),
        ("total return", pct(summary["total_return"])),
        ("annualised return", pct(summary["annualised_return"])),
        ("Sharpe (annualised)", num(summary["sharpe"])),
        ("max drawdown", f"{pct(summary['max_drawdown'])} ({summary['max_drawdown_peak']} to "
                         f"{summary['max_drawdown_trough']})"),
        ("avg hourly turnover", pct(summary["avg_hourly_turnover"])),
        ("fees paid", f"{summary['fees_paid']:.2f} USDT"),
        ("funding paid", f"{summary['funding_paid']:.2f} USDT"),
        ("hit rate", pct(summary["hit_rate"])),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)


def monthly_returns(equity: pd.DataFrame, capital: float) -> pd.Series:
    when = pd.to_datetime(equity["run_time"].str.slice(0, 19))
    return equity["pnl"].groupby(when.dt.to_period("M")).sum() / capital


def picture(equity: pd.DataFrame, capital: float, png: Path, html: Path, summary: dict[str, Any]) -> None:
    """report.png (equity, drawdown, monthly returns) and report.html embedding it with the stats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    when = pd.to_datetime(equity["run_time"].str.slice(0, 19))
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), gridspec_kw={"height_ratios": [3, 1.3, 1.5]})
    axes[0].plot(when, equity["equity"], lw=1)
    axes[0].set_ylabel("equity (USDT)")
    axes[0].set_title("backtest equity")
    axes[1].fill_between(when, equity["drawdown"] * 100, 0, color="tab:red", alpha=0.5)
    axes[1].set_ylabel("drawdown %")
    monthly = monthly_returns(equity, capital) * 100
    axes[2].bar([str(p) for p in monthly.index], monthly.to_numpy(),
                color=["tab:green" if v >= 0 else "tab:red" for v in monthly.to_numpy()])
    axes[2].set_ylabel("monthly return %")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    image = base64.b64encode(png.read_bytes()).decode()
    rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in summary.items())
    html.write_text(f"<!doctype html><meta charset=utf-8><title>alphabus backtest</title>"
                    f"<h1>alphabus backtest</h1><img src='data:image/png;base64,{image}' style='max-width:100%'>"
                    f"<table>{rows}</table>\n", encoding="utf-8")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")

"""``alphabus sim``: a stand-in for the crawler (BMAC) that writes its directory, files and ready markers.

Two markets feed it, both pure functions of the hour index k so that any process (a test, a
benchmark, a second machine) can rebuild exactly what the simulator wrote for hour k:

* ``SyntheticMarket``: reproducible random coins at any universe size, with the awkward cases the
  selector must handle (pumps the ChgPctMax filter removes, young listings below min_candle_num,
  prices from 0.001 to 50000 with matching lot sizes).
* ``ReplayMarket``: real Binance hours from ``../shared/data/binance_usdm_1h`` (including ICPUSDT,
  which has candles but no exchange rules).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from shared.bmac import CANDLE_COLUMNS, EXGINFO_COLUMNS, BmacDir
from shared.clock import DEFAULT_TZ, zone
from shared.errors import UserMistake

log = logging.getLogger("sim")

HOUR = timedelta(hours=1)
HOUR_MS = 3_600_000
QUOTE = "USDT"


class Market(Protocol):
    """What ``write_hour`` needs: the crawler's three kinds of file for hour k."""

    def run_time(self, k: int) -> datetime: ...
    def exginfo(self) -> pd.DataFrame: ...
    def funding(self, k: int) -> pd.DataFrame: ...
    def candles(self, k: int) -> dict[str, pd.DataFrame]: ...


# -- frames in the crawler's exact schema -------------------------------------------------------------
def _times(begin_ms: np.ndarray, tz: str) -> pd.DatetimeIndex:
    """ms since epoch -> datetime64[us, tz], the unit and zone the crawler's feather files carry."""
    us = np.asarray(begin_ms, dtype=np.int64) * 1000
    return pd.DatetimeIndex(us.astype("datetime64[us]")).tz_localize("UTC").tz_convert(tz)


def _candle_frame(times: pd.DatetimeIndex, begin_ms: np.ndarray, cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """One symbol's candle file; ``cols`` holds every candle column except the two time columns."""
    data = {"candle_begin_time": times, "close_time": begin_ms + (HOUR_MS - 1), **cols}
    return pd.DataFrame({c: data[c] for c in CANDLE_COLUMNS})


def _funding_frame(symbols: list[str], rates: np.ndarray, times_ms: np.ndarray, tz: str) -> pd.DataFrame:
    return pd.DataFrame({
        "symbol": pd.Series(symbols, dtype="str"),
        "fundingRate": np.asarray(rates, dtype=np.float64),
        "time": _times(times_ms, tz),
    })


def _decimal_column(values: Iterable[str | Decimal]) -> list[Decimal | None]:
    """Decimals with one common number of places, so pyarrow stores decimal128 with a fixed scale."""
    parsed = [Decimal(str(v)) for v in values]
    finite = [d for d in parsed if d.is_finite()]
    scale = max([0, *(-int(d.as_tuple().exponent) for d in finite)])
    quantum = Decimal(1).scaleb(-scale)
    return [d.quantize(quantum) if d.is_finite() else None for d in parsed]


def _exginfo_frame(symbols: list[str], contract_type: Iterable[str], status: Iterable[str],
                   quote_asset: Iterable[str], price_tick: Iterable[str | Decimal],
                   face_value: Iterable[str | Decimal],
                   min_notional: Iterable[str | Decimal]) -> pd.DataFrame:
    data = {
        "symbol": pd.Series(symbols, dtype="str"),
        "contract_type": pd.Series(list(contract_type), dtype="str"),
        "status": pd.Series(list(status), dtype="str"),
        "base_asset": pd.Series([s.removesuffix(QUOTE) for s in symbols], dtype="str"),
        "quote_asset": pd.Series(list(quote_asset), dtype="str"),
        "margin_asset": pd.Series([QUOTE] * len(symbols), dtype="str"),
        "price_tick": pd.Series(_decimal_column(price_tick), dtype=object),
        "face_value": pd.Series(_decimal_column(face_value), dtype=object),
        "min_notional_value": pd.Series(_decimal_column(min_notional), dtype=object),
    }
    return pd.DataFrame({c: data[c] for c in EXGINFO_COLUMNS})


def _aware_hour(t: datetime, tz: str) -> datetime:
    if t.tzinfo is None:
        raise ValueError(f"start {t} must be timezone-aware")
    if (t.minute, t.second, t.microsecond) != (0, 0, 0):
        raise ValueError(f"start {t} is not an hour boundary")
    return t.astimezone(zone(tz))


def _ms(t: datetime) -> int:
    return round(t.timestamp() * 1000)


# -- synthetic market ---------------------------------------------------------------------------------
BLOCK = 500  # candles per generated block: paths grow block by block, so the simulator can run forever
_NAMED = (  # a few real-looking coins: symbol, typical price, hourly volatility
    ("BTCUSDT", 60_000.0, 0.006),
    ("ETHUSDT", 3_000.0, 0.008),
    ("SOLUSDT", 150.0, 0.012),
    ("DOGEUSDT", 0.15, 0.014),
    ("1000PEPEUSDT", 0.01, 0.02),
)
_PRICE_REVERSION = 0.999  # AR(1) of log price around its level: a slow pull that keeps prices in range
_VOLUME_PERSISTENCE = 0.9  # AR(1) of log activity (volume, and volatility with it): busy hours cluster
_CLUSTER_NORM = 0.06  # log activity has sd 0.35 / sqrt(1 - 0.9**2); this keeps the return sd at vol


@dataclass(frozen=True)
class _Coin:
    symbol: str
    log_level: float  # mean log price
    vol: float  # hourly return standard deviation (diffusive part)
    jump_rate: float  # probability of a 15-40% jump per hour
    log_quote_volume: float  # mean log USDT volume per hour
    trade_size: float  # mean USDT per trade
    funding: float  # the coin's typical funding rate
    listed: int  # global index of its first candle (> 0 for young listings)
    price_tick: Decimal  # price grid
    face_value: Decimal
    min_notional: Decimal


def _coin(seed: int, i: int, history: int) -> _Coin:
    """Coin i's fixed traits from its own RNG, so coin i is the same whatever the universe size."""
    rng = np.random.default_rng([seed, 0, i])
    draws = rng.random(8)
    if i < len(_NAMED):
        symbol, level, vol = _NAMED[i]
    else:
        symbol = f"SIM{i:03d}USDT"
        level = 10 ** (-3 + draws[0] * (math.log10(50_000) + 3))
        vol = 0.005 + 0.025 * draws[1]
    young = i >= len(_NAMED) and i % 10 == 9  # every tenth coin: ~10%, and always some
    age = 200 + int(draws[2] * 701)
    decade = math.floor(math.log10(level))
    return _Coin(
        symbol=symbol,
        log_level=math.log(level),
        vol=vol,
        jump_rate=(2 if i < len(_NAMED) else 2 * 10 ** draws[3]) / 1500,  # 2 to 20 jumps per 1500 hours
        log_quote_volume=math.log(10) * (4 + 4 * draws[4] if i >= len(_NAMED) else 7 + draws[4]),
        trade_size=10 ** (2 + 1.5 * draws[5]),
        funding=-0.0002 + 0.0006 * draws[6],
        listed=max(0, history - age) if young else 0,
        price_tick=Decimal(1).scaleb(min(-1, max(-7, decade - 4))),  # about five significant digits
        face_value=Decimal(1).scaleb(min(2, max(-3, -decade - 1))),  # a lot is worth 0.1 to 100 USDT
        min_notional=Decimal("100.0" if level >= 10_000 else "20.0" if level >= 1_000 else "5.0"),
    )


def _ar1(x0: np.ndarray, innovations: np.ndarray, phi: float) -> np.ndarray:
    """x_t = phi * x_{t-1} + e_t along axis 1 in closed form, in chunks so phi**-t stays small."""
    out = np.empty_like(innovations)
    prev = x0
    for s in range(0, innovations.shape[1], 64):
        e = innovations[:, s : s + 64]
        powers = phi ** np.arange(1, e.shape[1] + 1)
        out[:, s : s + e.shape[1]] = powers * (prev[:, None] + np.cumsum(e / powers, axis=1))
        prev = out[:, s + e.shape[1] - 1]
    return out


@dataclass(frozen=True)
class _State:
    """Where each coin's path stands at a block boundary (log-price deviation, log-volume, last close)."""

    x: np.ndarray
    y: np.ndarray
    close: np.ndarray


class SyntheticMarket:
    """Reproducible random coins: hour k's files are a pure function of (seed, constructor args, k).

    Global candle index j begins at ``start - history + j`` hours; the file at hour k holds
    candles [k, history + k), or fewer for a young listing. Coin i's candles in block b come from
    an RNG seeded by (seed, i, b), continuing the block before, so history never changes.
    """

    def __init__(self, symbols: int = 60, seed: int = 7, history: int = 1500, start: datetime | None = None,
                 tz: str = DEFAULT_TZ):
        if symbols < 1 or history < 1 or seed < 0:
            raise ValueError("symbols and history must be positive and seed non-negative")
        self.seed = seed
        self.history = history
        self.tz = tz
        self.start = _aware_hour(start or datetime(2024, 1, 1, tzinfo=zone(tz)), tz)
        self._origin_ms = _ms(self.start) - history * HOUR_MS
        self._coins = [_coin(seed, i, history) for i in range(symbols)]
        self.symbols = [c.symbol for c in self._coins]
        self._funding = np.array([c.funding for c in self._coins])
        self._log_level = np.array([c.log_level for c in self._coins])
        self._vol = np.array([c.vol for c in self._coins])[:, None]
        self._jump_rate = np.array([c.jump_rate for c in self._coins])[:, None]
        self._log_qv = np.array([c.log_quote_volume for c in self._coins])[:, None]
        self._trade_size = np.array([c.trade_size for c in self._coins])[:, None]
        self._tick = np.array([float(c.price_tick) for c in self._coins])[:, None]
        self._per_unit = np.array([float(1 / c.price_tick) for c in self._coins])[:, None]  # 10**places
        self._listed = np.array([c.listed for c in self._coins])
        first_close = self._to_tick(np.exp(self._log_level)[:, None], np.round)[:, 0]
        zeros = np.zeros(symbols)
        self._states = [_State(zeros, zeros, first_close)]  # state at the start of block b
        self._blocks: dict[int, dict[str, np.ndarray]] = {}
        self._funding_cache: dict[int, np.ndarray] = {}
        self._fields = [c for c in CANDLE_COLUMNS if c not in ("candle_begin_time", "close_time")]
        self._exginfo = _exginfo_frame(
            self.symbols, ["PERPETUAL"] * symbols, ["TRADING"] * symbols, [QUOTE] * symbols,
            [c.price_tick for c in self._coins], [c.face_value for c in self._coins],
            [c.min_notional for c in self._coins],
        )

    def run_time(self, k: int) -> datetime:
        """start + k hours, counted in UTC so a DST zone still gets real hours."""
        return (self.start.astimezone(UTC) + k * HOUR).astimezone(zone(self.tz))

    def exginfo(self) -> pd.DataFrame:
        return self._exginfo.copy()

    def _funding_at(self, k: int) -> np.ndarray:
        """Hour k's rates: each coin's typical rate plus that hour's noise (cached over the history window)."""
        rates = self._funding_cache.get(k)
        if rates is None:
            rng = np.random.default_rng([self.seed, 2, k])
            rates = np.clip(self._funding + 0.0001 * rng.standard_normal(len(self._coins)), -0.00095, 0.00095)
            self._funding_cache[k] = rates
            if len(self._funding_cache) > 2 * self.history:
                for old in [j for j in self._funding_cache if j <= k - self.history]:
                    del self._funding_cache[old]
        return rates

    def funding(self, k: int) -> pd.DataFrame:
        """The crawler's funding file at hour k: every hour's rates since it started (hour 0), at most the
        last ``history`` hours, oldest first, each hour's rows stamped at that hour."""
        hours = range(max(0, k - self.history + 1), k + 1)
        rates = np.concatenate([self._funding_at(j) for j in hours])
        times = np.repeat(np.array([_ms(self.run_time(j)) for j in hours], dtype=np.int64), len(self._coins))
        return _funding_frame(self.symbols * len(hours), rates, times, self.tz)

    def candles(self, k: int) -> dict[str, pd.DataFrame]:
        if k < 0:
            raise ValueError(f"hour {k} is before the first hour 0")
        first, end = k, self.history + k  # global candle indices [first, end)
        for b in range(first // BLOCK, (end - 1) // BLOCK + 1):
            self._block(b)
        for b in [b for b in self._blocks if b < first // BLOCK]:
            del self._blocks[b]  # behind the window for good (unless asked again: then regenerated)
        begin_ms = self._origin_ms + np.arange(first, end, dtype=np.int64) * HOUR_MS
        times = _times(begin_ms, self.tz)
        frames = {}
        for i, symbol in enumerate(self.symbols):
            lo = max(first, int(self._listed[i]))
            parts = [(self._blocks[b], max(lo, b * BLOCK) - b * BLOCK, min(end, (b + 1) * BLOCK) - b * BLOCK)
                     for b in range(lo // BLOCK, (end - 1) // BLOCK + 1)]
            cols = {name: np.concatenate([blk[name][i, s:e] for blk, s, e in parts]) for name in self._fields}
            frames[symbol] = _candle_frame(times[lo - first :], begin_ms[lo - first :], cols)
        return frames

    # -- path generation ----------------------------------------------------------------------------
    def _to_tick(self, price: np.ndarray, rounding: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Onto the price grid; dividing by the exact 10**places gives the double nearest the decimal."""
        return np.maximum(rounding(price * self._per_unit) / self._per_unit, self._tick)

    def _block(self, b: int) -> dict[str, np.ndarray]:
        """Block b's candles for every coin (cached while inside the window)."""
        if b not in self._blocks:
            while len(self._states) <= b:
                self._generate(len(self._states) - 1)  # only to learn where block b starts
            self._blocks[b] = self._generate(b)
        return self._blocks[b]

    def _generate(self, b: int) -> dict[str, np.ndarray]:
        """Block b from its starting state; records the state block b + 1 starts from."""
        n = len(self._coins)
        g, jump = np.empty((n, 6, BLOCK)), np.zeros((n, BLOCK))
        for i in range(n):
            rng = np.random.default_rng([self.seed, 1, i, b])
            rng.standard_normal(out=g[i])
            hits = np.flatnonzero(rng.random(BLOCK) < self._jump_rate[i, 0])
            size = 0.15 + 0.25 * rng.random(len(hits))  # a 15-40% move, up or down
            jump[i, hits] = np.log1p(np.where(rng.random(len(hits)) < 0.5, size, -size))
        news, wick_up, wick_down, activity, trade_noise, taker_noise = (g[:, j] for j in range(6))
        state = self._states[b]
        y = _ar1(state.y, 0.35 * activity, _VOLUME_PERSISTENCE)
        returns = self._vol * np.exp(0.3 * y - _CLUSTER_NORM) * news + jump  # busy hours move more
        x = _ar1(state.x, returns, _PRICE_REVERSION)
        close = self._to_tick(np.exp(self._log_level[:, None] + x), np.round)
        open_ = np.concatenate([state.close[:, None], close[:, :-1]], axis=1)
        wick = 0.6 * self._vol
        high = self._to_tick(np.maximum(open_, close) * (1 + wick * np.abs(wick_up)), np.ceil)
        low = self._to_tick(np.minimum(open_, close) / (1 + wick * np.abs(wick_down)), np.floor)
        big_move = np.minimum(np.abs(returns) / self._vol, 8.0)  # volume spikes with the price
        quote_volume = np.exp(self._log_qv + y + 0.4 * big_move)
        volume = quote_volume / ((high + low + close) / 3)
        per_trade = self._trade_size / np.maximum(1 + 0.15 * trade_noise, 0.3)
        trades = np.maximum(1, np.rint(quote_volume / per_trade))
        taker = np.clip(0.5 + 0.08 * taker_noise + 0.15 * np.tanh(returns / self._vol), 0.05, 0.95)
        if len(self._states) == b + 1:
            self._states.append(_State(x[:, -1].copy(), y[:, -1].copy(), close[:, -1].copy()))
        return {
            "open": open_, "high": high, "low": low, "close": close, "volume": volume,
            "quote_volume": quote_volume, "trade_num": trades.astype(np.int64),
            "taker_buy_base_asset_volume": volume * taker,
            "taker_buy_quote_asset_volume": quote_volume * taker,
        }


# -- replay of real data ------------------------------------------------------------------------------
def _split(symbols: np.ndarray) -> dict[str, slice]:
    """Row ranges of each symbol in an array sorted by symbol."""
    starts = np.flatnonzero(np.r_[True, symbols[1:] != symbols[:-1]])
    ends = np.r_[starts[1:], len(symbols)]
    return {str(symbols[s]): slice(int(s), int(e)) for s, e in zip(starts, ends, strict=True)}


class OutOfRange(UserMistake, ValueError):
    """A replay asked for hours the data set does not hold: a user's mistake, said in one sentence."""


class ReplayMarket:
    """Real Binance hours replayed as the crawler would have written them.

    Hour 0's run_time is the open time of candle index ``first_hour`` (default ``history``) of
    the data set, so each file then holds up to ``history`` candles ending at the one just closed.
    """

    CANDLES = "candles_top100.parquet"
    FUNDING = "funding_top100.parquet"
    EXGINFO = "exchangeinfo_top100.csv"

    def __init__(self, data_dir: Path, history: int = 1500, first_hour: int | None = None,
                 tz: str = DEFAULT_TZ):
        data_dir = Path(data_dir)
        self.history = history
        self.tz = tz
        candles = pd.read_parquet(data_dir / self.CANDLES).sort_values(["symbol", "timestamp"], kind="stable")
        begin_ms = candles["timestamp"].to_numpy(np.int64)
        self._origin_ms = int(begin_ms.min())
        self._first = history if first_hour is None else first_hour
        count = (int(begin_ms.max()) - self._origin_ms) // HOUR_MS + 1  # hourly candle slots in the data
        self.hours = count - self._first + 1  # the last run_time is the last candle's close
        if self._first < 1 or self.hours < 1:
            raise OutOfRange(f"--first-hour {self._first} is outside the data set's {count} hourly candles "
                             f"(use 1 to {count})")
        self._rows = _split(candles["symbol"].to_numpy())
        self._table: pa.Table | None = None
        self.symbols = list(self._rows)
        self._begin_ms = begin_ms
        self._times = _times(begin_ms, tz)
        source = {"trade_num": "trades"}  # crawler column -> data set column, where they differ
        self._cols = {c: candles[source.get(c, c)].to_numpy(np.int64 if c == "trade_num" else np.float64)
                      for c in ("open", "high", "low", "close", "volume", "quote_volume", "trade_num")}

        # The crawler stamps each funding event at its hour (the data set's times are a few ms after it).
        funding = pd.read_parquet(data_dir / self.FUNDING).dropna(subset=["funding_rate"])
        funding["hour_ms"] = funding["timestamp"] - funding["timestamp"] % HOUR_MS
        funding = funding.sort_values(["hour_ms", "symbol"], kind="stable")
        self._funding_ms = funding["hour_ms"].to_numpy(np.int64)
        self._funding = _funding_frame(funding["symbol"].astype(str).tolist(), funding["funding_rate"],
                                       self._funding_ms, tz)  # each hour's file is a slice of it

        exact = {"tickSize": str, "stepSize": str, "minNotional": str}  # the text, not a float's rounding
        rules = pd.read_csv(data_dir / self.EXGINFO, dtype=exact)
        # The crawler keeps only trading USDT perpetuals in exginfo (BMAC's TradingUsdtSwapFilter) and
        # fetches candles for those alone: a SETTLING contract is neither listed nor written, and said so.
        traded = ((rules["status"] == "TRADING") & (rules["contractType"] == "PERPETUAL")
                  & (rules["quoteAsset"] == QUOTE))
        self.untraded = {str(sym): str(status) for sym, status in zip(rules["symbol"][~traded],
                                                                      rules["status"][~traded], strict=True)
                         if str(sym) in self._rows}  # symbol -> its status in the exchange info
        for symbol in self.untraded:
            del self._rows[symbol]
        self.symbols = list(self._rows)
        if self.untraded:
            log.info("not replayed, as the crawler lists and fetches only trading USDT perpetuals: %s",
                     ", ".join(f"{sym} (status {st} in the exchange info)" for sym, st in self.untraded.items()))
        rules = rules[traded]
        self._exginfo = _exginfo_frame(
            [str(s) for s in rules["symbol"]], rules["contractType"], rules["status"], rules["quoteAsset"],
            rules["tickSize"], rules["stepSize"], rules["minNotional"],
        )

    def run_time(self, k: int) -> datetime:
        if not 0 <= k < self.hours:
            raise IndexError(f"hour {k} is outside the replay's {self.hours} hours")
        return datetime.fromtimestamp((self._origin_ms + (self._first + k) * HOUR_MS) / 1000, zone(self.tz))

    def exginfo(self) -> pd.DataFrame:
        return self._exginfo.copy()

    def funding(self, k: int) -> pd.DataFrame:
        """The crawler's funding file at hour k: the events of the last ``history`` hours up to run_time,
        oldest first, each stamped at its hour."""
        run_ms = _ms(self.run_time(k))
        lo = int(np.searchsorted(self._funding_ms, run_ms - self.history * HOUR_MS, side="right"))
        hi = int(np.searchsorted(self._funding_ms, run_ms, side="right"))
        return self._funding.iloc[lo:hi].reset_index(drop=True)

    def _windows(self, k: int) -> dict[str, slice]:
        """Each listed symbol's rows in the file of hour k: up to ``history`` ending at the closed candle."""
        closed_ms = _ms(self.run_time(k)) - HOUR_MS  # the newest candle is the one that just closed
        windows = {}
        for symbol, rs in self._rows.items():
            end = rs.start + int(np.searchsorted(self._begin_ms[rs], closed_ms, side="right"))
            lo = max(rs.start, end - self.history)
            if end > lo:  # else not listed yet
                windows[symbol] = slice(lo, end)
        return windows

    def _frame(self, rows: slice) -> pd.DataFrame:
        cols = {c: a[rows] for c, a in self._cols.items()}
        nan = np.full(rows.stop - rows.start, np.nan)  # the source has no taker columns; keep the crawler's schema
        cols |= {"taker_buy_base_asset_volume": nan, "taker_buy_quote_asset_volume": nan.copy()}
        return _candle_frame(self._times[rows], self._begin_ms[rows], cols)

    def candles(self, k: int) -> dict[str, pd.DataFrame]:
        return {symbol: self._frame(rows) for symbol, rows in self._windows(k).items()}

    def candle_files(self, k: int) -> dict[str, pa.Buffer]:
        """Hour k's candle files as the feather bytes the crawler would write, without a disk.

        One Arrow table of the whole data set is built once; each file is a zero-copy slice of it
        serialised (the market's in-memory replay: many rounds a second).
        """
        if self._table is None:
            self._table = pa.Table.from_pandas(self._frame(slice(0, len(self._begin_ms))), preserve_index=False)
        files = {}
        for symbol, rows in self._windows(k).items():
            sink = pa.BufferOutputStream()
            window = self._table.slice(rows.start, rows.stop - rows.start)
            with pa.ipc.new_file(sink, window.schema) as writer:
                writer.write_table(window)
            files[symbol] = sink.getvalue()
        return files


# -- writing ------------------------------------------------------------------------------------------
def _sleep_until(deadline: float, stop: Callable[[], bool] | None = None) -> bool:
    """Sleep until time.monotonic() reaches deadline; False as soon as stop() says so."""
    while True:
        if stop is not None and stop():
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, 0.05))


def write_hour(bmac: BmacDir, market: Market, k: int, spread_sec: float = 0.0,
               order_seed: int | None = None, resume: bool = False) -> datetime:
    """Write hour k as the crawler does: exginfo, funding, then each symbol's file and marker.

    With spread_sec > 0 the symbols arrive evenly over spread_sec in a shuffled order (seeded by
    order_seed, random when None), like a crawler whose requests finish at different times.
    Frames are built before the first write so the spread measures writing, not generating.
    ``resume``: finish an hour a previous run left unfinished, writing only what has no marker yet.
    """
    run_time = market.run_time(k)
    frames = market.candles(k)
    if resume:
        done = bmac.ready_candles(run_time)
        frames = {s: df for s, df in frames.items() if s not in done}
    order = sorted(frames)
    if spread_sec > 0:
        random.Random(order_seed).shuffle(order)
    previous = market.run_time(k - 1) if k > 0 else None  # whose markers to replace, without a glob
    if not (resume and bmac.exginfo_ready(run_time).exists()):
        bmac.write_exginfo(market.exginfo(), run_time, previous)
    if not (resume and bmac.funding_ready(run_time).exists()):
        bmac.write_funding(market.funding(k), run_time, previous)
    started = time.monotonic()
    for i, symbol in enumerate(order):
        if spread_sec > 0:
            _sleep_until(started + spread_sec * i / len(order))
        bmac.write_candles(symbol, frames[symbol], run_time, previous)
    return run_time


def _newest_stamp(bmac: BmacDir) -> str | None:
    """The newest hour an exginfo or funding marker names (funding's still names the previous hour while
    the exginfo marker is being replaced)."""
    names = [p.name for p in bmac.exginfo_dir.glob("*.ready")] if bmac.exginfo_dir.is_dir() else []
    stamps = [n.removesuffix(".ready").split("_", 1)[1] for n in names if n.startswith(("exginfo_", "funding_"))]
    return max(stamps, default=None)


def _resume_hour(bmac: BmacDir, market: Market) -> tuple[int, bool]:
    """Where a restarted sim carries on: (hour, whether that hour is unfinished and must be completed).

    After the newest hour on disk, so readers following its clock never wait for hours they have
    already seen to come round again; or that hour itself when the previous run stopped halfway
    through it (exginfo, funding or some symbols' files and markers not written yet).
    """
    stamp = _newest_stamp(bmac)
    if stamp is None:
        return 0, False
    try:
        newest = datetime.strptime(stamp, "%Y%m%d_%H%M%S").replace(tzinfo=market.run_time(0).tzinfo)
    except ValueError:
        return 0, False
    k = round((newest - market.run_time(0)).total_seconds() / 3600)
    try:
        if k < 0 or market.run_time(k) != newest:
            return 0, False
    except IndexError:
        return 0, False
    written = bmac.exginfo_ready(newest).exists() and bmac.funding_ready(newest).exists()
    if written and set(market.candles(k)) <= bmac.ready_candles(newest):
        return k + 1, False
    return k, True


def _clear_ready_markers(bmac: BmacDir, keep: datetime | None = None) -> int:
    """A restarted sim must not leave markers that make a reader take old files for the new hour
    (those of ``keep``, the unfinished hour it is about to complete, stay)."""
    kept = f"_{keep.strftime('%Y%m%d_%H%M%S')}.ready" if keep is not None else None
    stale = [p for d in (bmac.exginfo_dir, bmac.candle_dir) if d.is_dir() for p in d.glob("*.ready")
             if kept is None or not p.name.endswith(kept)]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def run(out_dir: Path, *, symbols: int = 60, seed: int = 7, history: int = 1500, hours: int | None = None,
        hour_seconds: float = 3.0, spread_sec: float = 0.5, replay: Path | None = None,
        first_hour: int | None = None, tz: str = DEFAULT_TZ, stop: Callable[[], bool] | None = None) -> int:
    """The ``alphabus sim`` entry point: the crawler's files on an accelerated clock.

    Hour k is written at t0 + k * hour_seconds until ``hours`` hours are written, stop() is true
    or the replay data run out.
    """
    market: SyntheticMarket | ReplayMarket
    if replay is not None:
        market = ReplayMarket(Path(replay), history, first_hour, tz)
        limit = market.hours if hours is None else min(hours, market.hours)
        what = f"replay of {replay} ({len(market.symbols)} symbols, {market.hours} hours)"
    else:
        market = SyntheticMarket(symbols, seed, history, tz=tz)
        limit = hours
        what = f"synthetic market ({symbols} symbols, seed {seed})"
    bmac = BmacDir(out_dir, "1h")
    first, unfinished = _resume_hour(bmac, market)
    removed = _clear_ready_markers(bmac, market.run_time(first) if unfinished else None)
    log.info("sim writing %s into %s: history %d, an hour every %gs, symbols spread over %gs%s%s",
             what, bmac.root, history, hour_seconds, spread_sec,
             f", {removed} stale ready markers removed" if removed else "",
             f", completing the unfinished hour {first}" if unfinished
             else f", resuming after hour {first - 1} already written" if first else "")
    if spread_sec >= hour_seconds:
        log.warning("spread_sec %g >= hour_seconds %g: hours will run late", spread_sec, hour_seconds)
    t0 = time.monotonic() - first * hour_seconds
    k, behind = first, False
    while limit is None or k < limit:
        if not _sleep_until(t0 + k * hour_seconds, stop):
            break
        late = time.monotonic() - (t0 + k * hour_seconds)
        if late > hour_seconds and not behind:
            behind = True
            log.warning("sim is behind its clock (hour %d starts %.1fs late): writing an hour takes longer "
                        "than hour_seconds=%g; hours now follow each other without a pause", k, late,
                        hour_seconds)
        started = time.perf_counter()
        before = len(bmac.ready_candles(market.run_time(k))) if unfinished else 0
        run_time = write_hour(bmac, market, k, spread_sec, resume=unfinished)
        log.info("sim hour %s: wrote %d symbols in %.0f ms%s", run_time.isoformat(),
                 len(bmac.ready_candles(run_time)), (time.perf_counter() - started) * 1000,
                 f" ({before} already written before the restart)" if unfinished else "")
        k, unfinished = k + 1, False
    if replay is not None and k == market.hours:
        log.info("sim: the replay data ends after %d hours", k)
    return 0

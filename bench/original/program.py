"""The original program (the article's ``startup.py`` and the modules it imports), run as the bench's baseline.

A transcription of the code the article publishes: ``QuantConfig``, the ``FactorCalculator`` and
``FilterCalculator`` that import ``factors.<Name>`` / ``filters.<Name>`` by name, ``load_market``,
``get_fundingrate``, the busy-wait ``fetch_swap_candle_data_and_calc_factors_filters``,
``filiter_nan_inf``, ``filter_before``, ``select_coin``, ``assign_position``, ``save_selected``,
``save_factor`` and the body of ``run_loop``, kept as published (logging calls included: their
``str(df)`` arguments are evaluated at any log level). The helpers the article uses without
printing them (``CandleFeatherManager``'s two readers, ``now_time``, ``wait_until_ready``,
``round_to_tick``) are written from what they do.

It runs in its own pinned environment (pandas 2.2.1, numpy 1.26.4, pyarrow 15.0.2, see
``bench/pinned.py``) from a folder laid out like the article's repository (this file, ``factors/``,
``filters/``, ``utils/``), and never imports alphabus. Instead of sleeping until the next hour it
serves the bench, its clock set to each hour's start (``set_clock``), one JSON line per hour on stdin:

    {"workdir": W, "run_time": "2024-01-01T08:00:00+08:00"}
    -> {"began": t0, "selected": t1, "finished": t2, "long": [[symbol, position], ...], "short": [...]}

t0..t2 are ``time.perf_counter()`` (CLOCK_MONOTONIC, comparable with the bench's own stamps) at
step 1, after ``save_selected`` and after the step-7 logging. ``workdir`` holds factor_calc.json; its
``QuantConfig`` is built (plugins imported) once, before its first hour is timed, as the article
builds it once at startup.
"""

# ruff: noqa: N803, RUF059 (the article's names and unpacking, kept as published)

import json
import logging
import os
import sys
import time
import traceback
from datetime import datetime, timedelta
from decimal import Decimal
from importlib import import_module

import numpy as np
import pandas as pd
import pyarrow
import talib

MY_DEBUG_LEVEL = 15  # between DEBUG(10) and INFO(20)


# -- utils.commons and candle_manager (not printed in the article) -----------------------------------
CLOCK_SHIFT = timedelta(0)  # the bench's hours are simulated: see serve()


def now_time():
    return datetime.now().astimezone() - CLOCK_SHIFT


def wait_until_ready(mgr, symbol, run_time, expire_time):
    while not mgr.check_ready(symbol, run_time):
        time.sleep(0.01)
        if now_time() > expire_time:
            return False
    return True


def round_to_tick(value: Decimal, tick: Decimal) -> Decimal:
    return Decimal(int(round(value / tick)) * tick)  # noqa: RUF046 (the original's rounding)


class CandleFeatherManager:
    def __init__(self, base_dir):
        self.base_dir = base_dir

    def check_ready(self, symbol, run_time):
        return os.path.exists(os.path.join(self.base_dir, f"{symbol}_{run_time.strftime('%Y%m%d_%H%M%S')}.ready"))

    def read_candle(self, symbol) -> pd.DataFrame:
        return pd.read_feather(os.path.join(self.base_dir, f"{symbol}.fea"))


# -- config.py ---------------------------------------------------------------------------------------
class QuantConfig:
    def __init__(self, workdir):
        self.workdir = workdir

        cfg_path = os.path.join(workdir, "factor_calc.json")
        cfg = json.load(open(cfg_path))

        self.interval = cfg["interval"]

        self.bmac_dir = cfg["bmac_dir"]
        self.bmac_expire_sec = cfg["bmac_expire_sec"]

        self.long_num = cfg["long_num"]
        self.short_num = cfg["short_num"]

        self.min_candle_num = cfg["min_candle_num"]

        self.capital_usdt = cfg["capital_usdt"]

        self.exg_mgr = CandleFeatherManager(os.path.join(self.bmac_dir, f"exginfo_{self.interval}"))
        self.candle_mgr = CandleFeatherManager(os.path.join(self.bmac_dir, f"usdt_swap_{self.interval}"))

        self.factor_cfg = cfg["factor"]
        self.filter_cfgs = cfg["filters"]

        self.debug = cfg.get("debug", False)

        self.factor_calcs = [create_factor_calc_from_alpha_config(self.factor_cfg)]
        self.filter_calcs = [create_filter_calc_from_alpha_config(cfg) for cfg in self.filter_cfgs]


# -- market.py ---------------------------------------------------------------------------------------
def load_market(exg_mgr: CandleFeatherManager, run_time, bmac_expire_sec):
    expire_time = run_time + timedelta(seconds=bmac_expire_sec)
    is_ready = wait_until_ready(exg_mgr, "exginfo", run_time, expire_time)

    if not is_ready:
        raise RuntimeError(f"exginfo not ready at {now_time()}")

    df_exg: pd.DataFrame = exg_mgr.read_candle("exginfo")
    return df_exg


def get_fundingrate(exg_mgr: CandleFeatherManager, run_time, expire_sec):
    expire_time = run_time + timedelta(seconds=expire_sec)
    is_ready = wait_until_ready(exg_mgr, "funding", run_time, expire_time)

    if not is_ready:
        raise RuntimeError("Funding rate not ready")

    return exg_mgr.read_candle("funding")


# -- factor_calc.py ----------------------------------------------------------------------------------
class FactorCalculator:
    def __init__(self, factor, back_hour, d_num):
        self.backhour = int(back_hour)
        self.d_num = d_num

        factor_module_name = f"factors.{factor}"
        module = import_module(factor_module_name)
        self.signal_func = module.signal

        if d_num == 0:
            self.factor_name = f"{factor}_bh_{back_hour}"
        else:
            self.factor_name = f"{factor}_bh_{back_hour}_diff_{d_num}"

    def calc(self, df: pd.DataFrame):
        return self.signal_func(df, self.backhour, self.d_num, self.factor_name)


class FilterCalculator:
    def __init__(self, filter, params):
        self.filter_name = f"{filter}_fl_{params}"
        self.params = params

        filter_module_name = f"filters.{filter}"
        module = import_module(filter_module_name)
        self.signal_func = module.signal

    def calc(self, df: pd.DataFrame):
        return self.signal_func(df, self.params, self.filter_name)


def create_factor_calc_from_alpha_config(cfg):
    factor, if_reverse, back_hour, d_num, weight = cfg
    return FactorCalculator(factor, back_hour, d_num)


def create_filter_calc_from_alpha_config(cfg):
    filter, params = cfg
    return FilterCalculator(filter, params)


def fetch_swap_candle_data_and_calc_factors_filters(candle_mgr: CandleFeatherManager, symbol_list, run_time,
                                                    expire_sec, factor_calcs, filter_calcs, min_candle_num):
    unready_symbols = set(symbol_list)
    expire_time = run_time + timedelta(seconds=expire_sec)
    symbol_data = dict()

    while True:
        while len(unready_symbols) > 0:
            readies = {s for s in unready_symbols if candle_mgr.check_ready(s, run_time)}
            if len(readies) == 0:
                break
            for sym in readies:
                df = candle_mgr.read_candle(sym)
                if len(df) < min_candle_num:
                    continue
                df["symbol"] = sym
                for factor_calc in factor_calcs:
                    factor_calc.calc(df)
                for filter_calc in filter_calcs:
                    filter_calc.calc(df)
                symbol_data[sym] = df
            unready_symbols -= readies
            logging.log(MY_DEBUG_LEVEL, "readys=%d, unready=%d, read=%d", len(readies), len(unready_symbols),
                        len(symbol_data))
        if len(unready_symbols) == 0:
            break
        if now_time() > expire_time:
            break
        time.sleep(0.01)
    current_hour_results = [df.iloc[-1] for df in symbol_data.values()]
    df_factor = pd.DataFrame(current_hour_results).reset_index(drop=True)
    return df_factor


# -- position.py -------------------------------------------------------------------------------------
def filiter_nan_inf(df_factor, factor_filter_cols):
    with pd.option_context("mode.use_inf_as_na", True):
        return df_factor[~df_factor[factor_filter_cols].isna().any(axis=1)]


def filter_before(df1: pd.DataFrame):
    long_condition1 = df1["ChgPctMax_fl_24"].between(-1e100, 0.2, inclusive="both")
    df1 = df1.loc[long_condition1]

    df1["Volume_fl_24_rank"] = df1.groupby("candle_begin_time")["Volume_fl_24"].rank(method="first",
                                                                                     pct=False,
                                                                                     ascending=False)
    long_condition2 = df1["Volume_fl_24_rank"].between(-1e100, 60, inclusive="both")
    df1 = df1.loc[long_condition2]

    return df1


def select_coin(df_factor: pd.DataFrame, factor_name, ascending, long_num, short_num):
    df_factor = df_factor.sort_values(factor_name, ascending=ascending, ignore_index=True)
    df_short = df_factor.head(short_num).copy()
    df_long = df_factor.tail(long_num).copy()

    return df_long, df_short


def assign_position(df_long, df_short, df_exg, capital_usdt, long_num, short_num):

    def pos(capital, close, face_value):
        return round_to_tick(Decimal(capital / close), face_value)

    long_coin_capital = capital_usdt / 2 / long_num
    df_long["position"] = df_long.apply(
        lambda r: pos(long_coin_capital, r["close"], df_exg.at[r["symbol"], "face_value"]), axis=1)
    df_long["pos_val"] = df_long["position"].astype(float) * df_long["close"]

    short_coin_capital = capital_usdt / 2 / short_num
    df_short["position"] = df_short.apply(
        lambda r: pos(short_coin_capital, r["close"], df_exg.at[r["symbol"], "face_value"]), axis=1)
    df_short["pos_val"] = df_short["position"].astype(float) * df_short["close"]

    return df_long, df_short


# -- save_log.py -------------------------------------------------------------------------------------
def save_factor(workdir, run_time, df_factor):
    output_dir = os.path.join(workdir, "factor_his")
    if not os.path.exists(output_dir):
        os.makedirs(output_dir)
    output_path = os.path.join(output_dir, run_time.strftime("coin_%Y%m%d_%H%M%S.csv.zip"))
    df_factor.to_csv(output_path, index=False)


def save_selected(workdir, run_time, df_long, df_short):
    output_dir = os.path.join(workdir, "select_his")
    if not os.path.exists(output_dir):
        os.makedirs(output_dir)
    drop_cols = [
        "open", "high", "low", "close_time", "volume", "trade_num", "taker_buy_base_asset_volume",
        "taker_buy_quote_asset_volume"
    ]
    long_path = os.path.join(output_dir, run_time.strftime("%Y%m%d_%H%M%S_long.csv.zip"))
    df_long.drop(columns=drop_cols).to_csv(long_path, index=False)
    short_path = os.path.join(output_dir, run_time.strftime("%Y%m%d_%H%M%S_short.csv.zip"))
    df_short.drop(columns=drop_cols).to_csv(short_path, index=False)


# -- startup.py: run_loop from "1 加载市场信息" on, for the hour the bench names -----------------------
def run_loop(Q: QuantConfig, run_time) -> dict:
    began = time.perf_counter()

    # 1 加载市场信息
    df_exg = load_market(Q.exg_mgr, run_time, Q.bmac_expire_sec)
    symbol_list = list(df_exg["symbol"])
    df_exg.set_index("symbol", inplace=True)

    logging.info("获取当前周期合约完成")
    logging.log(MY_DEBUG_LEVEL, "\n" + str(df_exg.head(2)))

    # 2 获取当前资金费率
    df_funding = get_fundingrate(Q.exg_mgr, run_time, Q.bmac_expire_sec)
    logging.info("获取资金费数据完成")
    logging.log(MY_DEBUG_LEVEL, "\n" + str(df_funding.tail(3)))

    # 3 算因子
    df_factor = fetch_swap_candle_data_and_calc_factors_filters(Q.candle_mgr, symbol_list, run_time, Q.bmac_expire_sec,
                                                                Q.factor_calcs, Q.filter_calcs, Q.min_candle_num)

    logging.info("计算所有币种K线因子完成")
    df_factor_all = df_factor.copy()

    # 4 过滤
    factor_filter_cols = [c.factor_name for c in Q.factor_calcs] + [c.filter_name for c in Q.filter_calcs]
    df_factor = filiter_nan_inf(df_factor, factor_filter_cols)
    df_factor = filter_before(df_factor)

    # 5 选币
    df_long, df_short = select_coin(df_factor, Q.factor_calcs[0].factor_name, Q.factor_cfg[1], Q.long_num, Q.short_num)

    # 6 分配仓位
    df_long, df_short = assign_position(df_long, df_short, df_exg, Q.capital_usdt, Q.long_num, Q.short_num)

    # 7 记录因子和选币结果
    save_selected(Q.workdir, run_time, df_long, df_short)
    selected = time.perf_counter()
    save_factor(Q.workdir, run_time, df_factor_all)

    drop_cols = [
        "open", "high", "low", "close_time", "volume", "trade_num", "taker_buy_base_asset_volume",
        "taker_buy_quote_asset_volume"
    ]
    logging.log(MY_DEBUG_LEVEL, "\n" + str(df_exg.loc[list(df_long["symbol"]) + list(df_short["symbol"])]))

    logging.log(MY_DEBUG_LEVEL, "Short\n" + str(df_short.drop(columns=drop_cols)))
    logging.log(MY_DEBUG_LEVEL, "Long\n" + str(df_long.drop(columns=drop_cols)))
    finished = time.perf_counter()

    side = lambda df: [[str(s), str(p)] for s, p in zip(df["symbol"], df["position"], strict=True)]  # noqa: E731
    return {"began": began, "selected": selected, "finished": finished, "long": side(df_long),
            "short": side(df_short)}


# -- the bench's side of the pipe ----------------------------------------------------------------------
def set_clock(run_time) -> None:
    """Make now_time() read run_time now, as sleep_until_run_time leaves it when run_loop starts, so the
    bmac_expire_sec deadlines count from the start of a simulated hour as they do from a real one."""
    global CLOCK_SHIFT
    CLOCK_SHIFT = datetime.now().astimezone() - run_time


def serve() -> None:
    """Answer one JSON line per hour; stdout is kept for the replies (plugins' prints go to stderr)."""
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    logging.addLevelName(MY_DEBUG_LEVEL, "MyDebug")
    logging.basicConfig(format="%(asctime)s (%(levelname)s) - %(message)s", level=logging.INFO,
                        datefmt="%Y%m%d %H:%M:%S")
    versions = {"python": sys.version.split()[0], "pandas": pd.__version__, "numpy": np.__version__,
                "pyarrow": pyarrow.__version__, "talib": talib.__version__}
    replies.write(json.dumps({"ready": True, "versions": versions}) + "\n")
    replies.flush()
    configs: dict = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["workdir"] not in configs:
                configs[request["workdir"]] = QuantConfig(request["workdir"])
            run_time = datetime.fromisoformat(request["run_time"])
            set_clock(run_time)
            reply = run_loop(configs[request["workdir"]], run_time)
        except Exception as err:  # the article logs and retries; the bench reports it
            traceback.print_exc()
            reply = {"error": f"{type(err).__name__}: {err}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()

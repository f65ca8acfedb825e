"""The dashboard: its pure view of rounds and equity, and the page in a real headless Chromium during a running
stack (a new round appears without a reload)."""

from __future__ import annotations

import shutil
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from alphabus.launcher import free_port
from services.dashboard.board import Board, equity_curve, holdings, round_row, round_status
from services.market.sim import SyntheticMarket, write_hour
from shared.quantities import exposure, lot_decimals, quantity_text
from tests.stack import StackRun

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


# -- the pure view ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("qty", "lot", "signed", "text"), [
    ("1406.900", "0.100", False, "1406.9"),      # the crawler's common scale goes, the lot's decimals stay
    ("0.380", "0.001", False, "0.380"),
    ("64600.000", "100.000", False, "64600"),    # never 6.46E+4
    ("-44.800", "0.100", True, "-44.8"),
    ("12.000", "1.000", True, "+12"),
    ("0.000", "0.100", True, "0.0"),             # no sign on zero
    ("0.380", None, False, "0.38"),              # no lot known: padding zeros go
    ("64600.000", None, False, "64600"),
])
def test_quantities_print_with_their_lots_decimals(qty, lot, signed, text):
    assert quantity_text(Decimal(qty), Decimal(lot) if lot else None, signed=signed) == text


def test_lot_decimals():
    assert [lot_decimals(Decimal(x)) for x in ("0.100", "0.001", "1.000", "100.000", "5")] == [1, 3, 0, 0, 0]


def test_exposure_is_gross_and_net_of_signed_targets():
    ex = exposure({"A": Decimal("2"), "B": Decimal("-3"), "C": Decimal("1")}, {"A": 100.0, "B": 50.0})
    assert (ex.long, ex.short, ex.gross, ex.net, ex.unpriced) == (200.0, 150.0, 350.0, 50.0, ("C",))


def _selection(run_time: str, targets: dict[str, str], previous: dict[str, str], **extra) -> dict:
    """A recorded selection (selection_his JSON) with what the dashboard reads."""
    closes = {"AUSDT": 10.0, "BUSDT": 2.0, "CUSDT": 0.5}
    pick = lambda s: {"symbol": s, "close": closes[s], "position": targets[s].lstrip("-")}  # noqa: E731
    symbols = set(targets) | set(previous)
    changes = {s: str(Decimal(targets.get(s, "0")) - Decimal(previous.get(s, "0"))) for s in symbols}
    return {"run_time": run_time, "long": [pick(s) for s, q in targets.items() if not q.startswith("-")],
            "short": [pick(s) for s, q in targets.items() if q.startswith("-")], "targets": targets,
            "changes": changes, "previous_run_time": None, "incomplete": False, "latency_ms": 12.5, "pool": 3,
            "coverage": {"expected": 4, "received": 3, "skipped": {"DUSDT": "too_few_candles: 10"},
                         "missing": [], "late": [], "shards": ["0/1"], "silent_shards": []}, **extra}


def test_holdings_by_side_with_values_trades_and_exposure():
    record = _selection("2024-01-01T01:00:00+08:00", {"AUSDT": "30.000", "BUSDT": "-50.000"},
                        {"AUSDT": "20.000", "CUSDT": "-100.000"})
    view = holdings(record, {"AUSDT": Decimal("0.100"), "BUSDT": Decimal("1.000")})
    assert view["long"] == [{"symbol": "AUSDT", "target": "+30.0", "close": 10.0, "value": 300.0}]
    assert view["short"] == [{"symbol": "BUSDT", "target": "-50", "close": 2.0, "value": -100.0}]
    assert (view["gross"], view["net"]) == (400.0, 200.0)
    trades = {t["symbol"]: t for t in view["trades"]}
    assert trades["AUSDT"]["trade"] == "+10.0" and trades["AUSDT"]["value"] == 100.0
    assert trades["BUSDT"]["trade"] == "-50" and trades["CUSDT"]["trade"] == "+100"  # a short closed: buy back
    assert trades["CUSDT"]["target"] == "0" and trades["CUSDT"]["value"] is None  # no close this round
    earlier = _selection("2024-01-01T00:00:00+08:00", {"AUSDT": "20.000", "CUSDT": "-100.000"}, {})
    sold_out = {t["symbol"]: t for t in holdings(record, {}, earlier)["trades"]}["CUSDT"]
    assert sold_out["value"] == 50.0  # valued at the round before's close


def test_round_rows_say_ok_flagged_and_missed():
    ok = _selection("2024-01-01T00:00:00+08:00", {"AUSDT": "1"}, {})
    flagged = _selection("2024-01-01T01:00:00+08:00", {"AUSDT": "1"}, {}, incomplete=True)
    flagged["coverage"]["missing"] = ["EUSDT"]
    missed = {"run_time": "2024-01-01T02:00:00+08:00", "missed": True, "reason": "no_exginfo", "detail": "late"}
    assert [round_status(r) for r in (ok, flagged, missed)] == ["ok", "flagged", "missed"]
    row = round_row(ok)
    assert (row["received"], row["expected"], row["skipped"], row["pool"], row["latency_ms"]) == (3, 4, 1, 3, 12.5)
    view = Board([ok, missed, flagged]).view({}, None)
    assert [r["run_time"] for r in view["rounds"]] == [missed["run_time"], flagged["run_time"], ok["run_time"]]
    assert [(p["status"], p["reason"]) for p in view["problems"]] == [("missed", "no_exginfo"),
                                                                       ("flagged", "1 symbol(s) missing")]
    assert view["latest"]["run_time"] == flagged["run_time"]  # the newest published round, not the missed hour


def test_the_board_keeps_the_newest_rounds_and_counts_versions():
    board = Board(limit=2)
    for k in range(4):
        board.add({"run_time": f"2024-01-01T0{k}:00:00+08:00", "missed": True, "reason": "no_round", "detail": ""})
    assert board.version == 4 and board.newest_run_time() == "2024-01-01T03:00:00+08:00"
    assert len(board.view({}, None)["rounds"]) == 2


def test_drawdown_is_measured_from_the_running_peak():
    frame = pd.DataFrame({"run_time": list("abcde"), "equity": ["0", "5.5", "2.5", "7", "-1"]})
    curve = equity_curve(frame)
    assert [p["drawdown"] for p in curve["points"]] == [0.0, 0.0, -3.0, 0.0, -8.0]
    assert (curve["last"], curve["max_drawdown"]) == (-1.0, -8.0)
    assert equity_curve(pd.DataFrame({"run_time": ["a"], "equity": [-2.0]}))["max_drawdown"] == -2.0


# -- the page in a real browser --------------------------------------------------------------------

def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)  # nothing downloaded


def _wait_for_http(url: str, timeout: float, alive) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            assert alive() is True, alive()
            assert time.monotonic() < deadline, f"{url} did not answer within {timeout}s"
            time.sleep(0.2)


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="NO BROWSER: chromium and chromium-driver (Debian packages) are not installed, so the "
                           "dashboard page was NOT tested in a browser; .ci/run installs them")
def test_the_page_shows_a_new_round_without_a_reload(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    market = SyntheticMarket(symbols=30, seed=21)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with StackRun(tmp_path) as stack:
        first = write_hour(stack.bmac, market, 0)
        stack.wait_for_round(first)
        stack.services.start("paper", ["paper", str(stack.workdir)])
        stack.services.start("dashboard", ["dashboard", str(stack.workdir), "--port", str(port)])
        _wait_for_http(url + "api/state", 60, lambda: not stack.crashed() or f"exited: {stack.crashed()}")
        browser = _browser()
        try:
            browser.get(url)
            wait = WebDriverWait(browser, 60)
            row = f'#rounds tr[data-run-time="{first.isoformat()}"]'
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, row))
            wait.until(lambda b: b.find_element(By.ID, "live").text == "live")
            browser.execute_script("window.loadedOnce = 'still the same page';")
            assert browser.find_elements(By.CSS_SELECTOR, "#long tbody tr td.pos")  # long targets, valued

            second = write_hour(stack.bmac, market, 1)
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f'#rounds tr[data-run-time="{second.isoformat()}"]'))
            assert browser.execute_script("return window.loadedOnce") == "still the same page"  # no reload
            wait.until(lambda b: b.find_elements(By.ID, "equity-line"))  # the paper executor's equity.csv
            summary = browser.find_element(By.ID, "summary").text
            assert second.isoformat().replace("T", " ") in summary and "ok" in summary
            assert "gross exposure" in summary and "pool after filters" in summary
            first_cell = browser.find_element(By.CSS_SELECTOR, "#rounds tbody tr td").text
            assert first_cell == second.isoformat().replace("T", " ")  # newest first
            assert "first round" not in browser.find_element(By.ID, "trades-since").text
            shot = Path(tmp_path) / "dashboard.png"
            browser.save_screenshot(str(shot))
            print(f"dashboard screenshot: {shot}")
            assert shot.stat().st_size > 10_000
        finally:
            browser.quit()
        assert not stack.crashed()

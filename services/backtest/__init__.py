"""``alphabus backtest``: a strategy's history through the live stack's own pure code, with its equity.

history.py  loads a candle history (the real data set, a BMAC directory or a folder of feather files),
            names bad input and keeps going
factors.py  each symbol's factor values at every hour from exactly the crawler's file then
engine.py   the hourly driver: the live pool, rules, ranking and sizing, then the shared paper book
report.py   equity.csv, trades.csv, selections, stats.json, the printed table and report.png/html
run.py      the thin shell the CLI calls (progress, process pool, --compare-live)
"""

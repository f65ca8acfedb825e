"""``python -m bench``: how fast the four-service stack turns the crawler's files into a selection,
next to the original program it replaces.

It writes simulated BMAC directories (200, 1000 and 2000 symbols, 1500 candles each), runs the real
stack on them (four services as processes over TCP, ``clock="follow"``) with the article's
built-in factor and with two user factor files (``bench/plugins``: a TA-Lib CCI, a pandas bias),
and times two ways a round can begin:

* burst: every ready file is already there when the round starts (a restart, a slow crawler);
* live: the round starts, then the symbols' ready markers appear one by one over about a second;

each up to ``select_his/<ts>_long.csv.zip`` written. After every round the original program
(``bench/original``, the article's code in its own pinned environment, ``bench/pinned.py``) runs
the same hour on the same files and must pick the same coins, so the ratios hold on a noisy
machine. It also reports each service's memory and CPU per round, and the rounds per second of a
full-speed replay of the real data set.
"""

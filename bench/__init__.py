"""``python -m bench``: how fast the four-service stack turns the crawler's files into a selection.

It writes simulated BMAC directories (200, 1000 and 2000 symbols, 1500 candles each), runs the real
stack on them (four services as processes over TCP, ``clock="follow"``) and times, from the bench
process, two ways a round can begin:

* burst: every ready file is already there when the round starts (a restart, a slow crawler);
* live: the round starts, then the symbols' ready markers appear one by one over about a second;

next to the article's single-process per-symbol pandas loop (``tests/reference.py``) on the same
files in the same run, so the ratios hold on a noisy machine. It also reports each service's memory
and CPU per round, and the rounds per second of a full-speed replay of the real data set.
"""

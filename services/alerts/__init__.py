"""Which service raises which alert, in one place (``rules`` decides, ``watch`` is what the services call).

| event              | raised by | when                                                                      |
|--------------------|-----------|---------------------------------------------------------------------------|
| round_incomplete   | position  | a round is published with symbols missing at the deadline                 |
| round_missed       | position  | an hour gets no selection: the market's Missed, a gap, a withheld round   |
| shard_silent       | position  | a factor shard stops sending heartbeats (or never starts, its siblings do) |
| service_restarted  | position  | the market or a shard heartbeats under a new identity; the position       |
|                    |           | service itself starts with a saved selection                              |
| target_change      | position  | one symbol's target changes by more than target_change_fraction of capital |
| crawler_late       | market    | the crawler's exginfo/funding marker or some candles miss the deadline     |
| symbol_listed      | market    | a symbol appears in exginfo (compared with the round before, this run)     |
| symbol_delisted    | market    | a symbol leaves exginfo                                                   |

The position service sees every round's outcome, the market's Missed records and every heartbeat;
only the market sees the crawler's files.
"""

"""The original program's ``add_diff``: a fractional difference of a factor column, by the ``fracdiff`` package.

``fracdiff`` does not install on Python 3.10+, so in the pinned environment a factor run with
d_num > 0 fails on this import, as it would for a user there; the bench runs d_num = 0.
"""

import numpy as np


def add_diff(_df, _d_num, _name, _window=10):
    from fracdiff import fdiff

    if len(_df) >= 12:  # only difference series of at least 12 rows
        _diff_ar = fdiff(_df[_name], n=_d_num, window=_window, mode="valid")
        _paddings = len(_df) - len(_diff_ar)
        _diff = np.nan_to_num(np.concatenate((np.full(_paddings, 0), _diff_ar)), nan=0)
        _df[_name] = _diff
    else:
        _df[_name] = np.nan
    return _df

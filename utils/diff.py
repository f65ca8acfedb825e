"""The original program's ``add_diff``: a fractional difference of a factor column.

It used the ``fracdiff`` package, which no longer installs on Python 3.10+;
``shared.fracdiff.fdiff`` is the same operator (tested against its formula).
"""

import numpy as np

from shared.fracdiff import fdiff

eps = 1e-8


def add_diff(_df, _d_num, _name, _window=10):
    if len(_df) >= 12:  # only difference series of at least 12 rows
        _diff_ar = fdiff(_df[_name], n=_d_num, window=_window, mode="valid")
        _paddings = len(_df) - len(_diff_ar)
        _diff = np.nan_to_num(np.concatenate((np.full(_paddings, 0), _diff_ar)), nan=0)
        _df[_name] = _diff
    else:
        _df[_name] = np.nan
    return _df

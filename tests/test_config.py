"""The article's factor_calc.json loads unchanged; bad configs name every bad field."""

from __future__ import annotations

import json

import pytest

from shared.config import ConfigError, load_config, parse_config
from shared.strategy import ARTICLE_PRE_RULES
from tests.reference import article_config


def test_article_config_loads_with_article_defaults(tmp_path):
    (tmp_path / "factor_calc.json").write_text(json.dumps(article_config("../usdt_1h_alpha")))
    cfg = load_config(tmp_path)
    assert cfg.factor.column == "MtmAtrMean_bh_120"
    assert cfg.factor.reverse is True
    assert [f.column for f in cfg.filters] == ["ChgPctMax_fl_24", "Volume_fl_24"]
    assert cfg.pre_filters == ARTICLE_PRE_RULES
    assert [r.as_list() for r in cfg.pre_filters] == [["ChgPctMax", 24, "val:<=0.2", True],
                                                     ["Volume", 24, "rank:<=60", False]]
    assert cfg.timezone == "Asia/Hong_Kong"
    assert (cfg.long_num, cfg.short_num, cfg.min_candle_num, cfg.capital_usdt) == (2, 8, 999, 1000)


def test_factor_column_names_follow_the_article():
    cfg = parse_config(article_config("x", factor=["MtmAtrMean", False, 96, 0.5, 1]))
    assert cfg.factor.column == "MtmAtrMean_bh_96_diff_0.5"


def test_every_invalid_field_is_named():
    raw = article_config("x", long_num=-1, capital_usdt="lots", interval=5, factor=["MtmAtrMean", True, 0, 0, 1])
    del raw["bmac_dir"]
    raw["surprise"] = 1
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    text = str(e.value)
    for field in ("long_num", "capital_usdt", "interval", "factor.back_hour", "bmac_dir", "surprise"):
        assert field in text, f"{field} not named in:\n{text}"


def test_unknown_plugins_list_what_exists():
    with pytest.raises(ConfigError) as e:
        parse_config(article_config("x", factor=["NoSuch", True, 10, 0, 1], filters=[["Nope", 3]]))
    text = str(e.value)
    assert "factor.name: no factor plugin 'NoSuch'; available: FundingRate, MtmAtrMean, PctChange" in text
    assert "filters.0.name: no filter plugin 'Nope'; available: ChgPctMax, FundingRate, FundingRateMean, Volume" in text


def test_a_rule_naming_no_plugin_names_the_rule_and_the_plugins():
    with pytest.raises(ConfigError) as e:
        parse_config(article_config("x", pre_filters=[["ChgPctMx", 24, "val:<=0.2"]]))
    assert ('pre_filters.0.0: the rule ["ChgPctMx", 24, "val:<=0.2", true] names no filter plugin \'ChgPctMx\' '
            "(it would read column 'ChgPctMx_fl_24'); available: ChgPctMax, FundingRate, FundingRateMean, "
            "Volume") in str(e.value)


def test_a_rule_on_a_filter_not_listed_computes_that_filter():
    cfg = parse_config(article_config("x", filters=[["ChgPctMax", 48], ["Volume", 24]]))
    assert cfg.filter_columns == ["ChgPctMax_fl_48", "Volume_fl_24", "ChgPctMax_fl_24"]


def test_bad_interval_and_timezone_are_named():
    with pytest.raises(ConfigError) as e:
        parse_config(article_config("x", interval="1w", timezone="Mars/Olympus"))
    assert "interval:" in str(e.value) and "timezone:" in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path)
    (tmp_path / "factor_calc.json").write_text('{"interval": "1h",, }')
    with pytest.raises(ConfigError, match="not valid JSON at line 1"):
        load_config(tmp_path)


def test_user_plugins_in_the_workdir_are_found(tmp_path):
    (tmp_path / "factors").mkdir()
    (tmp_path / "factors" / "Mine.py").write_text("def signal(*args):\n    return args[0]\n")
    (tmp_path / "factor_calc.json").write_text(json.dumps(article_config("x", factor=["Mine", True, 5, 0, 1])))
    assert load_config(tmp_path).factor.name == "Mine"


def test_cli_reports_invalid_config_with_exit_code_2(tmp_path, capsys):
    from alphabus.cli import main

    (tmp_path / "factor_calc.json").write_text(json.dumps(article_config("x", short_num="eight")))
    assert main(["position", str(tmp_path)]) == 2
    assert "short_num" in capsys.readouterr().err


STRICT_MISTAKES = [
    ({"long_num": "2"}, 'long_num: must be a whole number of coins such as 2 or a fraction of the pool in (0, 1] '
                        'such as 0.1, not "2"'),
    ({"long_num": True}, "long_num: must be a whole number of coins such as 2 or a fraction of the pool in (0, 1] "
                         "such as 0.1, not true"),
    ({"short_num": 8.0}, "short_num: a fraction of the pool must be in (0, 1], such as 0.1, not 8.0; write a whole "
                         "number such as 2 for a fixed count"),
    ({"min_candle_num": "999"}, 'min_candle_num: must be a whole JSON number such as 2, not "999"'),
    ({"capital_usdt": "1000"}, 'capital_usdt: must be a JSON number such as 1000, not "1000"'),
    ({"bmac_expire_sec": True}, "bmac_expire_sec: must be a JSON number such as 1000, not true"),
    ({"debug": 1}, "debug: must be JSON true or false, not 1"),
    ({"debug": "false"}, 'debug: must be JSON true or false, not "false"'),
    ({"factor": ["MtmAtrMean", "yes", 120, 0, 1]}, 'factor.reverse: must be JSON true or false, not "yes"'),
    ({"factor": ["MtmAtrMean", 1, 120, 0, 1]}, "factor.reverse: must be JSON true or false, not 1"),
    ({"factor": ["MtmAtrMean", True, "120", 0, 1]}, 'factor.back_hour: must be a JSON number such as 120, not "120"'),
    ({"factor": ["MtmAtrMean", True, 120, False, 1]}, "factor.d_num: must be a JSON number such as 120, not false"),
    ({"pre_filters": [["ChgPctMax", 24, "val:<=0.2", "no"]]},
     'pre_filters.0.3: must be JSON true or false, not "no"'),
]


@pytest.mark.parametrize(("override", "problem"), STRICT_MISTAKES, ids=[p.split(":")[0] + str(list(o.values()))
                                                                        for o, p in STRICT_MISTAKES])
def test_json_types_are_strict_and_the_error_says_how_to_fix_them(override, problem):
    with pytest.raises(ConfigError) as e:
        parse_config(article_config("x", **override))
    assert e.value.problems == [problem]


def test_every_strict_type_mistake_is_named_in_one_error():
    raw = article_config("x", long_num="2", short_num=True, capital_usdt="1000", debug="yes",
                         factor=["MtmAtrMean", "yes", 120, 0, 1])
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    named = {p.split(":")[0] for p in e.value.problems}
    assert named == {"long_num", "short_num", "capital_usdt", "debug", "factor.reverse"}


def test_the_shipped_configs_stay_valid_and_keep_their_number_types():
    from tests.conftest import REPO

    for path in [*sorted((REPO / "docker").glob("factor_calc*.json"))]:
        cfg = parse_config(json.loads(path.read_text()), str(path))
        assert cfg.factor.column == "MtmAtrMean_bh_120", path  # an int stays an int in the column name
    cfg = parse_config(article_config("x", factor=["MtmAtrMean", False, 96, 0.5, 1], capital_usdt=1234.5))
    assert cfg.factor.column == "MtmAtrMean_bh_96_diff_0.5" and cfg.capital_usdt == 1234.5

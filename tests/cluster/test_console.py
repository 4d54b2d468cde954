"""cluster/console.py: the short forms of durations and rates in progress lines and `yard status`."""
from cluster.console import format_duration, format_rate


def test_format_duration():
    assert [format_duration(s) for s in (1.5, 16, 245, 12000, 183600)] == ["1.5s", "16s", "4m05s", "3h20m", "2d03h"]


def test_format_rate_picks_a_readable_unit():
    assert format_rate(None) == "-"
    assert (format_rate(2.34), format_rate(0.008)) == ("2.3 items/s", "125 s/item")

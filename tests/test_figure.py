"""What every report figure shares (medcore.report.figure): the column check, the page width, closing a figure."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from medcore.report import figure


def test_require_columns_names_what_is_missing():
    with pytest.raises(ValueError, match=r"a figure needs columns \['x', 'y'\]; missing \['y'\]"):
        figure.require_columns(pd.DataFrame({"x": [1]}), ["x", "y"], "a figure")
    figure.require_columns(pd.DataFrame({"x": [1], "y": [2]}), ["x", "y"], "a figure")


def test_a_finished_figure_has_its_title_the_column_width_and_is_closed():
    fig, _ = figure.new_figure()
    assert fig.get_figwidth() == figure.COLUMN_WIDTH
    assert figure.finish(fig, "t") is fig and fig._suptitle.get_text() == "t"
    assert not plt.fignum_exists(fig.number)  # the caller shows it; pyplot keeps no open figure


def test_first_seen_order_and_byte_unit():
    assert figure.first_seen_order(pd.Series(["b", "a", "b", "c"])) == ["b", "a", "c"]
    assert [figure.byte_unit(n) for n in (5e9, 2e6, 3e3)] == ["GB", "MB", "KB"]

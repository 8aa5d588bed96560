"""Raster figures: shapes, colours where the data says so."""

import numpy as np

from otcache_core.figures import COMPUTED, REUSED, heatmap, line_plot, schedule_strips, side_by_side, stack_vertically
from otcache_core.schedule import Schedule


def test_strips_mark_computed_and_reused_steps():
    image = schedule_strips([("a", Schedule.from_steps([0, 3], 5)), ("b", Schedule.all_compute(5))])
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    colors = {tuple(c) for c in image.reshape(-1, 3)}
    assert COMPUTED in colors and REUSED in colors


def test_heatmap_leaves_unmeasured_cells_white_and_scales_the_rest():
    m = np.full((4, 4), np.nan)
    m[0, 2], m[0, 3], m[1, 3] = 0.01, 1.0, 0.1
    image = heatmap(m, cell=1)
    assert tuple(image[3, 0]) == (255, 255, 255)
    assert image[0, 3].sum() < image[0, 2].sum()  # the larger error is darker


def test_line_plot_and_layout_helpers():
    plot = line_plot([("x", [3.0, 2.0, 1.0], (200, 0, 0))], width=120, height=60)
    assert plot.shape == (60, 120, 3) and (plot == [200, 0, 0]).all(axis=-1).any()
    both = side_by_side([plot, plot])
    assert both.shape[1] > 2 * 120 and stack_vertically([plot, plot]).shape[0] > 120


def test_layout_places_each_image_at_its_offset_on_white():
    a = np.zeros((3, 5, 3), dtype=np.uint8)
    b = np.full((4, 2, 3), 7, dtype=np.uint8)
    down = stack_vertically([a, b], pad=1)
    assert down.shape == (3 + 1 + 4, 5, 3)
    assert (down[:3] == 0).all() and (down[3] == 255).all() and (down[4:, :2] == 7).all() and (down[4:, 2:] == 255).all()
    right = side_by_side([a, b], pad=2)
    assert right.shape == (4, 5 + 2 + 2, 3)
    assert (right[:3, :5] == 0).all() and (right[3, :5] == 255).all() and (right[:, 7:] == 7).all()

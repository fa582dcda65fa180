"""The rollout inspector's CAD picture: the reference solid above the prediction, both run again in the sandbox."""
from __future__ import annotations

import pytest

from mmrl.demo.render import RenderError
from mmrl.demo.runs import Sample
from mmrl.plugins import RENDERERS
from mmrl.sandbox import available
from tasks.cad_render import silhouette

pytest.importorskip("cadquery")
pytestmark = pytest.mark.skipif(not available(), reason="bubblewrap is not installed (.ci/install-sandbox)")

CUBE = "import cadquery as cq\nresult = cq.Workplane('XY').box(10, 10, 10)"
GROUP = {"fields": {"code": CUBE, "description": "a 10 mm cube"}}


def sample(completion: str) -> Sample:
    return Sample(group=0, index=0, total=1.0, advantage=0.0, rewards={"executable": 1.0, "iou": 0.5},
                  completion=completion)


def halves(image):
    mask = silhouette(image)
    middle = mask.shape[0] // 2
    return mask[:middle].sum(), mask[middle:].sum()


def test_reference_above_a_flatter_prediction():
    image = RENDERERS.get("cad")(None, GROUP, sample("```python\nimport cadquery as cq\n"
                                                     "result = cq.Workplane('XY').box(10, 10, 5)\n```"), {})
    top, bottom = halves(image)
    assert top > 0 and 0 < bottom < top  # same frame: the half-height box covers less


def test_a_failed_script_leaves_the_prediction_blank_under_the_reference():
    image = RENDERERS.get("cad")(None, GROUP, sample("```python\nresult = box((\n```"), {})
    top, bottom = halves(image)
    assert top > 0 and bottom == 0


def test_a_record_without_a_reference_script_is_a_render_error():
    with pytest.raises(RenderError, match="no reference script"):
        RENDERERS.get("cad")(None, {"fields": {}}, sample("x"), {})

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from benchmarks import representation_probe


def test_score_layers_ranks_each_layer_on_its_own():
    """Layer 0 separates matches from non-matches, layer 1 inverts them: APs 1 and below."""
    good = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    bad = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    rows = representation_probe.score_layers(torch.stack([good, bad]), [0, 0], [1, 2],
                                             np.array([1, 0]), np.array([5.0, 1.0]))
    assert [r["layer"] for r in rows] == [0, 1]
    assert rows[0]["ap"] == pytest.approx(1.0) and rows[0]["spearman"] == pytest.approx(1.0)
    assert rows[1]["ap"] == pytest.approx(0.5) and rows[1]["spearman"] == pytest.approx(-1.0)


@pytest.mark.parametrize("args", [["--datasets", "nope"], ["--prompts", "fancy"]])
def test_unknown_names_exit_2(args):
    result = CliRunner().invoke(representation_probe.main, args)
    assert result.exit_code == 2 and "unknown" in result.output

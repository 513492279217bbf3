"""Synthetic lesions: placed in host tissue, added to the label, optionally as separate instances."""

import numpy as np
import pytest
import torch
from sat3d.synthetic import RandSyntheticLesiond


def _crop():
    img = torch.full((1, 48, 48, 48), -3.0)  # "air"
    img[:, 8:40, 8:40, 8:40] = 0.0  # host tissue
    img += 0.05 * torch.randn_like(img)
    lab = torch.zeros((1, 48, 48, 48))
    lab[:, 10:16, 10:16, 10:16] = 1  # an existing tumour
    return img, lab


@pytest.mark.parametrize("instance_labels", [False, True])
def test_lesions_go_into_host_tissue_and_into_the_label(instance_labels):
    img, lab = _crop()
    t = RandSyntheticLesiond(["image", "label"], prob=1.0, max_lesions=3, diameter_mm=(9.0, 15.0),
                             instance_labels=instance_labels)
    seen_multi = False
    for seed in range(6):
        t.set_random_state(seed)
        out = t({"image": img.clone(), "label": lab.clone()})
        new = (out["label"] > 0) & (lab == 0)
        assert new.any(), "a lesion must be added to the label"
        assert torch.equal(out["label"][lab > 0], lab[lab > 0]), "the existing tumour keeps its label"
        assert torch.equal(out["image"][lab > 0], img[lab > 0]), "and its image"
        changed = (out["image"] - img).abs() > 0.5
        # centres are drawn in host tissue (a lesion near the body's edge may reach past it)
        assert changed.any() and (changed & (img > -2)).sum() > 0.7 * changed.sum(), "lesions go into tissue, not air"
        values = sorted(set(torch.unique(out["label"]).tolist()) - {0.0})
        if instance_labels:
            assert values == list(range(1, len(values) + 1)), "each lesion gets the next instance value"
            seen_multi |= len(values) > 2
        else:
            assert values == [1.0]
    if instance_labels:
        assert seen_multi, "with max_lesions 3, some crop must get two lesions as separate instances"


def test_no_lesion_when_probability_is_zero():
    img, lab = _crop()
    t = RandSyntheticLesiond(["image", "label"], prob=0.0, prob_empty=0.0)
    out = t({"image": img.clone(), "label": lab.clone()})
    assert torch.equal(out["image"], img) and torch.equal(out["label"], lab)
    with pytest.raises(ValueError, match="diameter_mm"):
        RandSyntheticLesiond(["image", "label"], diameter_mm=(5.0, 1.0))
    assert np.isfinite(out["image"].numpy()).all()

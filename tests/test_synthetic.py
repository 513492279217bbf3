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


def _contrasts(sampling, n=40):
    """The absolute contrast of ``n`` solid lesions inserted into a flat, noiseless host (median inside)."""
    t = RandSyntheticLesiond(["image", "label"], prob_empty=1.0, max_lesions=1, diameter_mm=(30.0, 30.0),
                             contrast=(0.2, 3.0), contrast_sampling=sampling, p_core=0.0, p_rim=0.0)
    out = []
    for seed in range(n):
        t.set_random_state(seed)
        d = t({"image": torch.zeros((1, 40, 40, 40)), "label": torch.zeros((1, 40, 40, 40))})
        out.append(float(d["image"][d["label"] > 0].median().abs()))
    return np.array(out)


@pytest.mark.parametrize("sampling, low_share", [("uniform", (0.0, 0.25)), ("log", (0.28, 0.6))])
def test_contrast_sampling_decides_how_common_faint_lesions_are(sampling, low_share):
    c = _contrasts(sampling)
    assert c.min() > 0.1 and c.max() < 3.0, "contrasts stay in the range (the partial-volume mix dims them ~0.87x)"
    # below 0.5 measured (0.575 drawn): log-uniform in (0.2, 3) puts 0.39 of the lesions there, uniform 0.13
    share = float((c < 0.5).mean())
    assert low_share[0] <= share <= low_share[1], f"{sampling}: {share:.2f} of the lesions are fainter than 0.5"
    with pytest.raises(ValueError, match="contrast_sampling"):
        RandSyntheticLesiond(["image", "label"], contrast_sampling="normal")
    with pytest.raises(ValueError, match="contrast"):
        RandSyntheticLesiond(["image", "label"], contrast=(0.0, 1.0))

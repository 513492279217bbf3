"""Training and evaluation: min-max iteration, clicks, losses, datalists, resume, data parallel, evaluate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE, make_sphere_volume
from ignite.engine import Events
from sat3d import build_sat3d
from sat3d.click_simulation import interior_voxel, next_click_volume, sample_error_clicks, sample_first_clicks
from sat3d.data import load_datalist
from sat3d.engine import SAT3DTrainer, frozen
from sat3d.evaluation import segmentation_metrics
from sat3d.handlers import latest_checkpoint
from sat3d.losses import CriticLoss, GeneratorLoss, uncertainty_masked_bce

TINY = ["--preset", "sat3d_tiny", "--roi_size", "[32,32,32]", "--num_workers", "0"]


def bundle_cmd(run_id: str, config: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config, *args]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    items = []
    for i in range(3):
        img, lab, aff = make_sphere_volume(seed=i, centre=[17 + 2 * i, 18, 21])
        lab = lab * (1 + (i % 2))  # cases with label value 1 and 2 (multi-class labels)
        nib.save(nib.Nifti1Image(img, aff), str(d / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(lab.astype(np.uint8), aff), str(d / f"c{i}_seg.nii.gz"))
        items.append({"image": f"c{i}.nii.gz", "label": f"c{i}_seg.nii.gz"})
    (d / "datalist.json").write_text(json.dumps({"training": items[:2], "validation": items[2:]}))
    return d


# ---------------------------------------------------------------- clicks and losses


def test_sample_error_clicks_sign_and_region():
    gt = torch.zeros(3, 1, 8, 8, 8)
    pred = torch.zeros(3, 1, 8, 8, 8)
    gt[0, 0, 1:5, 1:5, 1:5] = 1  # sample 0: missed tumour -> positive click inside the miss
    pred[1, 0, 2:6, 2:6, 2:6] = 1  # sample 1: false alarm -> negative click inside it
    gt[2], pred[2] = 1, 1  # sample 2: perfect -> padding
    pts, lab = sample_error_clicks(pred, gt, torch.Generator().manual_seed(0))
    assert lab.tolist() == [[1], [0], [-1]]
    i, j, k = pts[0, 0].long().tolist()
    assert gt[0, 0, i, j, k] == 1 and pred[0, 0, i, j, k] == 0
    i, j, k = pts[1, 0].long().tolist()
    assert pred[1, 0, i, j, k] == 1 and gt[1, 0, i, j, k] == 0


def test_interior_clicks_fall_deep_inside_the_largest_component():
    region = torch.zeros(24, 24, 24, dtype=torch.bool)
    region[2:13, 2:13, 2:13] = True  # largest component, centre (7, 7, 7), border distance up to 6
    region[18:21, 18:21, 18:21] = True  # smaller component: never clicked
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        i, j, k = interior_voxel(region, g, depth=0.5).long().tolist()
        assert all(4 <= c <= 10 for c in (i, j, k)), (i, j, k)  # at least 3 voxels from the border
    assert interior_voxel(region, g, depth=1.0).long().tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="non-empty"):
        interior_voxel(torch.zeros(4, 4, 4, dtype=torch.bool))
    pred = torch.zeros(1, 1, 24, 24, 24)
    pts, lab = sample_error_clicks(pred, region[None, None].float(), g, where="interior")
    assert lab.tolist() == [[1]] and all(4 <= c <= 10 for c in pts[0, 0].long().tolist())
    with pytest.raises(ValueError, match="click sampling"):
        sample_error_clicks(pred, region[None, None].float(), g, where="edge")
    # many scattered false alarms (more voxels in all) against one large miss: the user clicks the miss
    gt = torch.zeros(1, 1, 24, 24, 24)
    gt[0, 0, 2:10, 2:10, 2:10] = 1  # 512 missed voxels in one component
    scattered = torch.zeros_like(gt)
    scattered[0, 0, 12::2, ::2, ::2] = 1  # 6 x 12 x 12 = 864 isolated false-alarm voxels
    _, lab = sample_error_clicks(scattered, gt, g, where="interior")
    assert lab.tolist() == [[1]]
    _, lab = sample_error_clicks(scattered, gt, g, where="uniform")
    assert lab.tolist() == [[0]]  # the paper's rule: the larger error region


def test_largest_components_label_a_winding_component_in_few_sweeps(monkeypatch):
    """A serpentine of 880 voxels: plain neighbour propagation needs one sweep per voxel of its path;
    hooking and pointer jumping (the GPU's training clicks at 128^3) need a handful.  Same answer as scipy."""
    import sat3d.click_simulation as cs
    from scipy import ndimage

    snake = torch.zeros(3, 41, 41, dtype=torch.bool)
    snake[1, ::2, :] = True  # 21 rows of 41 voxels ...
    for row in range(0, 40, 2):
        snake[1, row + 1, 40 if row % 4 == 0 else 0] = True  # ... joined at alternating ends: one path
    snake[1, 10, 20] = False  # cut: two components of 230 and 650 voxels
    calls = []
    face_max = cs._face_max
    monkeypatch.setattr(cs, "_face_max", lambda x: calls.append(1) or face_max(x))
    masks, sizes = cs.largest_components(torch.stack([snake, snake.flip(2)]))
    lab, _ = ndimage.label(snake.numpy())
    big = int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
    assert sizes.tolist() == [650, 650] and torch.equal(masks[0], torch.from_numpy(lab == big))
    assert torch.equal(masks[1], masks[0].flip(2))
    assert len(calls) <= 20, f"{len(calls)} sweeps for a path of 650 voxels"


def test_batched_interior_clicks_follow_the_same_rule_on_the_tensors_device():
    """The GPU's interior clicks (torch, batched; run here on the CPU): largest component, deep inside it,
    the user's sign choice; a scipy distance check of the picked voxels."""
    from sat3d.click_simulation import border_distance, interior_voxels, largest_components
    from scipy import ndimage

    region = torch.zeros(24, 24, 24, dtype=torch.bool)
    region[2:13, 2:13, 2:13] = True  # 1331 voxels, centre (7, 7, 7)
    region[18:21, 18:21, 18:21] = True  # 27 voxels
    touching = torch.zeros(24, 24, 24, dtype=torch.bool)
    touching[2:5, 2:5, 2:5] = True
    touching[5:9, 5:8, 5:8] = True  # touches the first cube at one corner only: two components, as scipy says
    masks, sizes = largest_components(torch.stack([region, touching, torch.zeros_like(region)]))
    assert sizes.tolist() == [1331, 36, 0]
    assert torch.equal(masks[0], torch.from_numpy(ndimage.label(region.numpy())[0] == 1)) and not masks[2].any()
    assert torch.equal(masks[1], torch.from_numpy(ndimage.label(touching.numpy())[0] == 2))
    noisy = torch.rand(3, 20, 20, 20, generator=torch.Generator().manual_seed(3)) > 0.6  # many winding components
    masks, sizes = largest_components(noisy)
    for m, size, r in zip(masks, sizes.tolist(), noisy.numpy()):
        lab, n = ndimage.label(r)
        counts = np.bincount(lab.ravel())[1:]
        assert size == counts.max() and torch.equal(m, torch.from_numpy(lab == 1 + counts.argmax()))
    # octagonal distance: erosions alternate a cross and a cube.  An octahedron |x|+|y|+|z| <= 6 loses 1 to the
    # cross and 3 to the cube (6 -> 5 -> 2 -> 1 -> gone): its centre survives 3 erosions, distance 4 (cubes
    # only: 3); a 7^3 cube's centre is 4 either way; the volume's edge is border
    zz, yy, xx = torch.meshgrid(*[torch.arange(15) - 7] * 3, indexing="ij")
    octa = zz.abs() + yy.abs() + xx.abs() <= 6
    cube = torch.zeros(15, 15, 15, dtype=torch.bool)
    cube[4:11, 4:11, 4:11] = True
    dist = border_distance(torch.stack([octa, cube, torch.ones_like(cube)]))
    assert dist[0, 7, 7, 7] == 4 and dist[1, 7, 7, 7] == 4 and dist[1, 4, 7, 7] == 1 and dist[1, 3, 7, 7] == 0
    assert dist[2, 0, 7, 7] == 1 and dist[2, 7, 7, 7] == 8
    g = torch.Generator().manual_seed(0)
    assert interior_voxels(region[None].expand(2, -1, -1, -1), g, depth=1.0).long().tolist() == [[7, 7, 7]] * 2
    pts = interior_voxels(region[None].expand(30, -1, -1, -1), g, depth=0.5).long()
    assert all(4 <= c <= 10 for c in pts.view(-1).tolist())
    edt = ndimage.distance_transform_edt(np.pad(region.numpy(), 1))[1:-1, 1:-1, 1:-1]
    assert min(edt[tuple(p)] for p in pts.tolist()) >= 0.5 * edt.max() - 1
    assert len({tuple(p) for p in pts.tolist()}) > 5  # random among the deep voxels, not always the centre
    with pytest.raises(ValueError, match="at least one voxel"):
        interior_voxels(torch.stack([region, torch.zeros_like(region)]), g)
    gt = torch.zeros(2, 1, 24, 24, 24)
    gt[:, 0, 2:10, 2:10, 2:10] = 1  # 512 missed voxels in one component
    pred = torch.zeros_like(gt)
    pred[0, 0, 12::2, ::2, ::2] = 1  # sample 0: 864 scattered false alarms: the user still clicks the miss
    pred[1, 0, 2:10, 2:10, 2:10] = 1
    pred[1, 0, 12:22, 12:22, 12:22] = 1  # sample 1: the miss is gone, one large false alarm: a negative click
    diagonal = torch.zeros(1, 1, 24, 24, 24)  # a missed diagonal chain of 6 voxels (6 components of one
    diagonal[0, 0, range(2, 8), range(2, 8), range(2, 8)] = 1  # voxel to the evaluation's face-connected user)
    alarm = torch.zeros_like(diagonal)
    alarm[0, 0, 15, 15, 10:13] = 1  # against a straight false alarm of 3: the user clicks the false alarm
    for batched in (False, True):
        assert sample_error_clicks(alarm, diagonal, g, where="interior", batched=batched)[1].tolist() == [[0]]
        pts, lab = sample_error_clicks(pred, gt, g, where="interior", batched=batched)
        assert lab.tolist() == [[1], [0]], batched
        assert gt[0, 0][tuple(pts[0, 0].long().tolist())] == 1 and pred[1, 0][tuple(pts[1, 0].long().tolist())] == 1
        assert all(3 <= c <= 8 for c in pts[0, 0].long().tolist()) and all(14 <= c <= 19 for c in pts[1, 0].long().tolist())
    pts, lab = sample_error_clicks(gt, gt, g, where="interior", batched=True)
    assert lab.tolist() == [[-1], [-1]]
    first = torch.zeros(3, 1, 16, 16, 16)
    first[0, 0, 3:12, 3:12, 3:12] = 1
    pts, lab = sample_first_clicks(first, 1.0, g, batched=True)
    assert lab.tolist() == [[1], [-1], [-1]] and all(5 <= c <= 9 for c in pts[0, 0].long().tolist())


def test_first_clicks_are_positive_inside_the_tumour_or_absent():
    gt = torch.zeros(3, 1, 16, 16, 16)
    gt[0, 0, 3:12, 3:12, 3:12] = 1
    gt[1, 0, 5:9, 5:9, 5:9] = 1  # sample 2 has no tumour: never a click
    g = torch.Generator().manual_seed(1)
    pts, lab = sample_first_clicks(gt, 1.0, g)
    assert lab.tolist() == [[1], [1], [-1]]
    for b in (0, 1):
        i, j, k = pts[b, 0].long().tolist()
        assert gt[b, 0, i, j, k] == 1
    _, lab = sample_first_clicks(gt, 0.0, g)
    assert lab.tolist() == [[-1], [-1], [-1]]
    many = torch.cat([sample_first_clicks(gt[:1], 0.5, g)[1] for _ in range(200)])
    assert 60 < int((many == 1).sum()) < 140  # about half start from a click
    with pytest.raises(ValueError, match="probability"):
        sample_first_clicks(gt, 1.5, g)


def test_next_click_volume_centre_of_largest_error():
    gt = np.zeros((20, 20, 20), bool)
    gt[2:9, 2:9, 2:9] = True  # large miss, centre (5, 5, 5)
    pred = np.zeros_like(gt)
    pred[14:16, 14:16, 14:16] = True  # small false alarm
    (ijk, label) = next_click_volume(pred, gt)
    assert label == 1 and ijk == (5, 5, 5)
    assert next_click_volume(gt, gt) is None


def test_uncertainty_masked_ce_only_counts_uncertain_voxels():
    logits = torch.randn(1, 1, 4, 4, 4)
    target = (torch.rand(1, 1, 4, 4, 4) > 0.5).float()
    uncertain = torch.zeros(1, 1, 4, 4, 4, dtype=torch.bool)
    uncertain[..., :2] = True
    base = uncertainty_masked_bce(logits, target, uncertain)
    changed = logits.clone()
    changed[..., 2:] += 10.0  # certain voxels: no effect
    assert torch.allclose(uncertainty_masked_bce(changed, target, uncertain), base)
    changed[..., 0] += 10.0  # uncertain voxels: effect
    assert not torch.allclose(uncertainty_masked_bce(changed, target, uncertain), base)
    assert uncertainty_masked_bce(logits, target, torch.zeros_like(uncertain)) == 0


# ---------------------------------------------------------------- the min-max iteration


def _trainer(net, loader, **kw):
    opt = torch.optim.AdamW(net.generator_parameters(), lr=1e-2)
    copt = torch.optim.AdamW(net.critic.parameters(), lr=1e-2)
    return SAT3DTrainer(device="cpu", max_epochs=1, train_data_loader=loader, network=net, optimizer=opt,
                        critic_optimizer=copt, num_prompt_steps=3, decollate=False, **kw), opt, copt


def test_iteration_updates_generator_and_critic():
    torch.manual_seed(0)
    net = build_sat3d("sat3d_tiny")
    img = torch.randn(2, 1, 32, 32, 32)
    lab = torch.zeros(2, 1, 32, 32, 32)
    lab[:, :, 10:20, 10:20, 10:20] = 1
    loader = [{"image": img, "label": lab}]
    gen0 = {n: p.detach().clone() for n, p in net.named_parameters() if not n.startswith("critic.")}
    crit0 = {n: p.detach().clone() for n, p in net.critic.named_parameters()}
    trainer, _, _ = _trainer(net, loader)
    trainer.run()
    out = trainer.state.output
    assert float(out["critic_loss"]) > 0 and "loss_adv" in out and "loss_unc" in out
    moved_gen = [n for n, p in net.named_parameters() if n in gen0 and not torch.equal(p, gen0[n])]
    moved_crit = [n for n, p in net.critic.named_parameters() if not torch.equal(p, crit0[n])]
    assert len(moved_gen) > 0.8 * len(gen0), "generator weights must move"
    assert len(moved_crit) == len(crit0), "every critic weight must move (its loss is not detached)"
    grads = [p.grad for p in net.critic.parameters()]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads), "critic loss must have gradients"


def test_training_runs_the_users_prompt_step():
    """One engine: each of the m prompt steps of training is the protocol step the session runs, and each
    step after the first feeds back the previous step's state and one more click."""
    from sat3d.protocols import Sat3dProtocol

    seen = []

    class Recording(Sat3dProtocol):
        def step(self, network, embedding, image, points=None, labels=None, state=None, detach_feedback=True):
            seen.append((points.shape[1], state.mask_prompt is None, detach_feedback))
            return super().step(network, embedding, image, points, labels, state, detach_feedback)

    torch.manual_seed(0)
    net = build_sat3d("sat3d_tiny")
    lab = torch.zeros(1, 1, 32, 32, 32)
    lab[:, :, 8:20, 8:20, 8:20] = 1
    trainer, _, _ = _trainer(net, [{"image": torch.randn(1, 1, 32, 32, 32), "label": lab}])
    trainer.protocol = Recording()
    trainer.run()
    assert seen == [(0, True, True), (1, False, True), (2, False, True)]


def test_first_click_curriculum_starts_from_a_positive_click_inside_the_tumour():
    from sat3d.protocols import Sat3dProtocol

    seen = []

    class Recording(Sat3dProtocol):
        def step(self, network, embedding, image, points=None, labels=None, state=None, detach_feedback=True):
            seen.append((points.clone(), labels.clone()))
            return super().step(network, embedding, image, points, labels, state, detach_feedback)

    torch.manual_seed(0)
    net = build_sat3d("sat3d_tiny")
    lab = torch.zeros(1, 1, 32, 32, 32)
    lab[:, :, 8:20, 8:20, 8:20] = 1
    trainer, _, _ = _trainer(net, [{"image": torch.randn(1, 1, 32, 32, 32), "label": lab}], first_click_prob=1.0,
                             click_sampling="interior")
    trainer.protocol = Recording()
    trainer.run()
    assert [p.shape[1] for p, _ in seen] == [1, 2, 3]  # one click from the start, then one per step
    first_p, first_l = seen[0]
    assert first_l.tolist() == [[1]]
    i, j, k = first_p[0, 0].long().tolist()
    assert lab[0, 0, i, j, k] == 1
    with pytest.raises(ValueError, match="first_click_prob"):
        _trainer(build_sat3d("sat3d_tiny"), [], first_click_prob=2.0)
    with pytest.raises(ValueError, match="click_sampling"):
        _trainer(build_sat3d("sat3d_tiny"), [], click_sampling="edge")


def test_target_rows_union_then_single_instances():
    from sat3d.engine import target_rows

    lab = torch.zeros(2, 1, 16, 16, 16)
    lab[0, 0, 1:4, 1:4, 1:4] = 1
    lab[0, 0, 6:9, 6:9, 6:9] = 2
    lab[0, 0, 11:14, 11:14, 11:14] = 3
    g = torch.Generator().manual_seed(0)
    src, rows, inst = target_rows(lab, 1, g)
    assert src.tolist() == [0, 1] and not inst.any() and torch.equal(rows, (lab > 0).float())
    src, rows, inst = target_rows(lab, 3, g)
    assert src.tolist() == [0, 1, 0, 0] and inst.tolist() == [False, False, True, True]
    picked = [int(lab[0, 0][rows[r, 0] > 0].unique().item()) for r in (2, 3)]
    assert len(set(picked)) == 2 and set(picked) <= {1, 2, 3}, "each extra row is one distinct instance"
    for r in (2, 3):
        assert torch.equal(rows[r, 0] > 0, lab[0, 0] == picked[r - 2])
    src, rows, inst = target_rows(lab, 10, g)  # fewer instances than asked: one row each
    assert src.tolist() == [0, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="targets_per_crop"):
        target_rows(lab, 0)


def test_several_targets_per_crop_share_one_encoding_and_start_from_their_click():
    from sat3d.protocols import Sat3dProtocol

    seen = []

    class Recording(Sat3dProtocol):
        def step(self, network, embedding, image, points=None, labels=None, state=None, detach_feedback=True):
            seen.append((embedding.shape[0], points.clone(), labels.clone(), state.mask_prompt is None))
            return super().step(network, embedding, image, points, labels, state, detach_feedback)

    torch.manual_seed(0)
    net = build_sat3d("sat3d_tiny")
    lab = torch.zeros(1, 1, 32, 32, 32)
    lab[:, :, 4:12, 4:12, 4:12] = 1
    lab[:, :, 18:28, 18:28, 18:28] = 2
    encodes = []
    net.image_encoder.register_forward_hook(lambda *a: encodes.append(1))
    trainer, _, copt = _trainer(net, [{"image": torch.randn(1, 1, 32, 32, 32), "label": lab}], targets_per_crop=3)
    trainer.protocol = Recording()
    trainer.run()
    assert len(encodes) == 1, "the crop is encoded once for all its targets"
    # step 1: the union row in the automatic mode (no point at all), then the two instance rows from a click
    (n_auto, p_auto, l_auto, fresh_a), (n_click, p_click, l_click, fresh_c) = seen[:2]
    assert (n_auto, p_auto.shape[1], fresh_a) == (1, 0, True) and (n_click, fresh_c) == (2, True)
    assert l_click[:, 0].tolist() == [1, 1]
    clicked = sorted(int(lab[0, 0][tuple(p.long().tolist())]) for p in p_click[:, 0])
    assert clicked == [1, 2], "each instance row's first click lies in its own instance"
    # later steps: all three rows together, one more click each
    assert [(n, p.shape[1]) for n, p, _, _ in seen[2:]] == [(3, 2), (3, 3)]
    assert trainer.state.output["label"].shape[0] == 3
    with pytest.raises(ValueError, match="targets_per_crop"):
        _trainer(build_sat3d("sat3d_tiny"), [], targets_per_crop=0)


@pytest.mark.parametrize("instances, union_clicked", [(1, True), (2, False)])
def test_union_row_starts_from_a_click_only_when_it_is_one_object(instances, union_clicked):
    """first_click_prob=1: a lone instance starts from its click; a union of several (a click would name
    only one of them) starts in the automatic mode while each instance row has its click."""
    from sat3d.protocols import Sat3dProtocol

    seen = []

    class Recording(Sat3dProtocol):
        def step(self, network, embedding, image, points=None, labels=None, state=None, detach_feedback=True):
            seen.append((embedding.shape[0], labels.clone()))
            return super().step(network, embedding, image, points, labels, state, detach_feedback)

    torch.manual_seed(0)
    lab = torch.zeros(1, 1, 32, 32, 32)
    lab[:, :, 4:12, 4:12, 4:12] = 1
    if instances == 2:
        lab[:, :, 18:28, 18:28, 18:28] = 2
    trainer, _, _ = _trainer(build_sat3d("sat3d_tiny"), [{"image": torch.randn(1, 1, 32, 32, 32), "label": lab}],
                             first_click_prob=1.0, targets_per_crop=3)
    trainer.protocol = Recording()
    trainer.run()
    if union_clicked:  # union and its single instance row both start from a click: one joint first step
        assert seen[0][0] == 2 and seen[0][1][:, 0].tolist() == [1, 1]
    else:  # automatic union row first (no point at all), then both instance rows from their clicks
        assert (seen[0][0], seen[0][1].shape[1]) == (1, 0)
        assert seen[1][0] == 2 and seen[1][1][:, 0].tolist() == [1, 1]


def test_gradient_accumulation_steps_every_n_iterations():
    torch.manual_seed(0)
    net = build_sat3d("sat3d_tiny")
    lab = torch.zeros(1, 1, 32, 32, 32)
    lab[:, :, 8:20, 8:20, 8:20] = 1
    loader = [{"image": torch.randn(1, 1, 32, 32, 32), "label": lab} for _ in range(4)]
    with pytest.raises(ValueError, match="accumulation_steps"):
        _trainer(build_sat3d("sat3d_tiny"), loader, accumulation_steps=0)
    trainer, _, _ = _trainer(net, loader, accumulation_steps=2)
    snapshots = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: snapshots.append((net.mask_decoder.mask_token.weight.detach().clone(), net.critic.head.weight.detach().clone())),
    )
    start = (net.mask_decoder.mask_token.weight.detach().clone(), net.critic.head.weight.detach().clone())
    trainer.run()
    for k in range(2):  # generator and critic
        assert torch.equal(snapshots[0][k], start[k]), "no step after the first of two accumulated iterations"
        assert not torch.equal(snapshots[1][k], snapshots[0][k]), "a step after the second"
        assert torch.equal(snapshots[2][k], snapshots[1][k])
        assert not torch.equal(snapshots[3][k], snapshots[2][k])


def test_generator_pass_leaves_critic_weights_alone():
    net = build_sat3d("sat3d_tiny")
    img = torch.randn(1, 1, 32, 32, 32)
    prob = torch.rand(1, 1, 32, 32, 32, requires_grad=True)
    with frozen(net.critic):
        loss = net.critic.forward_logits(img, prob).mean()
        loss.backward()
    assert all(p.grad is None for p in net.critic.parameters())
    assert prob.grad is not None and float(prob.grad.abs().sum()) > 0, "adversarial gradient must reach the mask"
    assert all(p.requires_grad for p in net.critic.parameters())
    with pytest.raises(ValueError, match="must not hold critic parameters"):
        SAT3DTrainer(device="cpu", max_epochs=1, train_data_loader=[], network=net,
                     optimizer=torch.optim.AdamW(net.parameters()), critic_optimizer=torch.optim.AdamW(net.critic.parameters()))


def _one_batch(b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(b, 1, 32, 32, 32, generator=g)
    lab = torch.zeros(b, 1, 32, 32, 32)
    lab[:, :, 8:20, 10:22, 9:21] = 1
    img = img + 2.0 * lab  # a visible target
    return {"image": img, "label": lab}


class _AdversarialOnly(GeneratorLoss):
    """Generator loss made of the adversarial term alone."""

    def forward(self, logits, target, critic_logits, iou_pred=None):
        parts = super().forward(logits, target, critic_logits, iou_pred)
        return {**parts, "loss": parts["adv"]}


def test_adversarial_term_alone_reaches_the_decoder():
    """Catches a critic fed ``prob.detach()``: the adversarial gradient must reach the mask decoder."""
    torch.manual_seed(0)
    net = build_sat3d("sat3d_tiny")
    trainer, _, _ = _trainer(net, [_one_batch()], generator_loss=_AdversarialOnly())
    trainer.run()
    grads = [p.grad for p in net.mask_decoder.parameters()]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads), "no adversarial gradient in the decoder"


def test_critic_gradients_untouched_during_the_generator_step():
    """Catches a critic that is not frozen in the generator pass (its grads would fill before its own step)."""
    torch.manual_seed(0)
    net = build_sat3d("sat3d_tiny")
    trainer, _, _ = _trainer(net, [_one_batch()])
    seen = []
    from monai.engines.utils import IterationEvents

    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED,
                              lambda e: seen.append([p.grad for p in net.critic.parameters()]))
    trainer.run()
    assert seen and all(g is None or float(g.abs().sum()) == 0 for g in seen[0]), "the generator step gave the critic gradients"


def test_critic_learns_to_score_ground_truth_above_prediction():
    """Catches swapped real/fake critic inputs: after a few iterations on one batch the critic must prefer the truth."""
    torch.manual_seed(0)
    net = build_sat3d("sat3d_tiny")
    batch = _one_batch()
    trainer, _, _ = _trainer(net, [batch] * 12)
    trainer.run()
    with torch.no_grad():
        pred = torch.sigmoid(net(batch["image"], with_critic=False)["logits"])
        real = float(net.critic(batch["image"], batch["label"]).mean())
        fake = float(net.critic(batch["image"], pred).mean())
    assert real > fake + 0.02, f"critic confidence on the truth {real:.3f} must exceed that on the prediction {fake:.3f}"


def test_loss_directions():
    """Adversarial target is 1 (critic saying 'real' lowers the generator loss); the critic loss is lowest when
    real is called real and fake called fake."""
    logits, target = torch.zeros(1, 1, 4, 4, 4), torch.ones(1, 1, 4, 4, 4)
    gl = GeneratorLoss()
    real_says = gl(logits, target, torch.full((1, 1, 4, 4, 4), 5.0))["adv"]
    fake_says = gl(logits, target, torch.full((1, 1, 4, 4, 4), -5.0))["adv"]
    assert real_says < fake_says
    cl = CriticLoss()
    hi, lo = torch.full((1, 1, 4, 4, 4), 5.0), torch.full((1, 1, 4, 4, 4), -5.0)
    assert cl(hi, lo) < cl(lo, hi) and cl(hi, lo) < 0.01


def test_batch_dice_penalises_false_alarms_in_an_empty_crop():
    """Per sample (the paper's Dice), an empty crop costs a Dice loss of about 1 whatever is predicted in it, so a
    small and a large false alarm cost about the same; with ``batch_dice`` the large one costs more."""
    target = torch.zeros(2, 1, 16, 16, 16)
    target[0, :, 4:12, 4:12, 4:12] = 1  # crop 0 holds a lesion (predicted exactly), crop 1 is empty
    seg = {}
    for size in (2, 8):
        logits = torch.where(target > 0, 20.0, -20.0)
        logits[1, :, :size, :size, :size] = 20.0  # a false alarm of size^3 voxels in the empty crop
        for batch in (False, True):
            seg[size, batch] = float(GeneratorLoss(batch_dice=batch).seg.dice(logits, target))  # the Dice part
    assert abs(seg[8, False] - seg[2, False]) < 0.01
    assert seg[8, True] > seg[2, True] + 0.2 and seg[2, True] < 0.1


def test_iou_head_target_is_the_true_iou():
    """The IoU head is trained towards the IoU of the thresholded prediction with the truth."""
    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., :2] = 1  # half the voxels
    logits = torch.full((1, 1, 4, 4, 4), -5.0)
    logits[..., :1] = 5.0  # predicts a quarter: IoU 0.5
    gl = GeneratorLoss()
    crit = torch.zeros(1, 1, 4, 4, 4)
    assert float(gl(logits, target, crit, torch.tensor([[0.5]]))["iou"]) == pytest.approx(0.0, abs=1e-6)
    assert float(gl(logits, target, crit, torch.tensor([[1.0]]))["iou"]) == pytest.approx(0.25, abs=1e-6)


def test_resume_restores_network_and_optimisers(tmp_path):
    """Catches a checkpoint that leaves out the network, an optimiser or the trainer state: MONAI's saver writes
    checkpoint_objects every iteration, latest_checkpoint finds the newest complete file (skipping a truncated
    one), and MONAI's loader puts a fresh network and fresh optimisers back to the saved state."""
    from monai.handlers import CheckpointLoader, CheckpointSaver
    from sat3d.handlers import checkpoint_file, checkpoint_objects, latest_checkpoint

    torch.manual_seed(0)
    net = build_sat3d("sat3d_tiny")
    trainer, opt, copt = _trainer(net, [_one_batch()] * 3)
    objs = checkpoint_objects(trainer=trainer, network=net, optimizer=opt, critic_optimizer=copt, lr_scheduler=None)
    assert set(objs) == {"trainer", "network", "optimizer", "critic_optimizer"}  # no AMP scaler on the CPU, None dropped
    CheckpointSaver(str(tmp_path), objs, save_interval=1, epoch_level=False, n_saved=2).attach(trainer)
    trainer.run()
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_iteration=2.pt", "checkpoint_iteration=3.pt"]
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_iteration=3.pt")
    saved = torch.load(latest_checkpoint(tmp_path), map_location="cpu", weights_only=False)
    (tmp_path / "checkpoint_iteration=4.pt").write_bytes((tmp_path / "checkpoint_iteration=3.pt").read_bytes()[:5000])
    assert checkpoint_file(tmp_path / "checkpoint_iteration=4.pt") is None  # killed while saving
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_iteration=3.pt")
    torch.manual_seed(1)
    net2 = build_sat3d("sat3d_tiny")
    trainer2, opt2, copt2 = _trainer(net2, [_one_batch()] * 3)
    objs2 = checkpoint_objects(trainer=trainer2, network=net2, optimizer=opt2, critic_optimizer=copt2)
    CheckpointLoader(latest_checkpoint(tmp_path), objs2, map_location="cpu")(trainer2)  # what STARTED runs
    for k, v in saved["network"].items():
        assert torch.equal(net2.state_dict()[k], v), k
    for mine, ref in ((opt2.state_dict(), saved["optimizer"]), (copt2.state_dict(), saved["critic_optimizer"])):
        assert mine["state"].keys() == ref["state"].keys() and mine["state"]
        for i in ref["state"]:
            for name, t in ref["state"][i].items():
                assert torch.equal(torch.as_tensor(mine["state"][i][name]), torch.as_tensor(t)), (i, name)
    assert trainer2.state.iteration == saved["trainer"]["iteration"] == 3


def test_bad_datalists_give_clear_errors(dataset, tmp_path):
    def write(obj):
        p = tmp_path / "dl.json"
        p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return str(p)

    assert len(load_datalist(str(dataset), str(dataset / "datalist.json"), "training", [1, 2])) == 2
    with pytest.raises(ValueError, match="not valid JSON"):
        load_datalist(str(dataset), write("{oops"))
    with pytest.raises(ValueError, match="no list under 'training'"):
        load_datalist(str(dataset), write({"validation": []}))
    with pytest.raises(ValueError, match=r"missing\.nii\.gz does not exist"):
        load_datalist(str(dataset), write({"training": [{"image": "missing.nii.gz", "label": "c0_seg.nii.gz"}]}))
    img, lab, aff = make_sphere_volume(shape=(30, 30, 30))
    nib.save(nib.Nifti1Image(lab[:29], aff), str(tmp_path / "short_seg.nii.gz"))
    nib.save(nib.Nifti1Image(img, aff), str(tmp_path / "img.nii.gz"))
    with pytest.raises(ValueError, match=r"has shape \(30, 30, 30\) but label short_seg\.nii\.gz has \(29, 30, 30\)"):
        load_datalist(str(tmp_path), write({"training": [{"image": "img.nii.gz", "label": "short_seg.nii.gz"}]}))
    nib.save(nib.Nifti1Image(np.zeros_like(lab), aff), str(tmp_path / "empty_seg.nii.gz"))
    with pytest.raises(ValueError, match=r"empty_seg\.nii\.gz is empty"):
        load_datalist(str(tmp_path), write({"training": [{"image": "img.nii.gz", "label": "empty_seg.nii.gz"}]}))


# ---------------------------------------------------------------- workflows end to end


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_train_config_passes_monais_workflow_checks(dataset, tmp_path):
    """MONAI's ConfigWorkflow drives train.json: the train properties (train#trainer, its max_epochs,
    train#dataset, train#inferer, the validation ones) are where MONAI looks and consistent with what the
    trainer uses; the standard 'run' id and the README's 'train' id both reach train#run; the multi-GPU
    overlay replaces only the sampler and the run steps."""
    from monai.bundle import ConfigParser, ConfigWorkflow

    wf = ConfigWorkflow(config_file=str(BUNDLE / "configs" / "train.json"), meta_file=str(BUNDLE / "configs" / "metadata.json"),
                        workflow_type="train", bundle_root=str(BUNDLE), dataset_dir=str(dataset),
                        output_dir=str(tmp_path / "o"), preset="sat3d_tiny", roi_size=[32, 32, 32], target_labels=[1, 2])
    wf.initialize()
    assert wf.check_properties() == []
    assert wf.max_epochs == wf.parser["max_epochs"] and wf.trainer.state.max_epochs == wf.max_epochs
    assert wf.parser["run"].replace("::", "#") == "@train#run"
    assert wf.parser["train#run"][-1].replace("::", "#") == "$@train#trainer.run()"
    assert wf.evaluator is wf.parser.get_parsed_content("validate#evaluator")
    assert wf.evaluator.state.key_metric_name == "val_mean_dice"
    # `run train` resolves the train section in key order: its run steps come first, so seeding (and, with the
    # multi-GPU overlay, the process group) precede building the network, the data and the sampler
    assert list(wf.parser["train"].keys())[0] == "run"
    out = tmp_path / "std"
    res = subprocess.run(bundle_cmd("run", str(BUNDLE / "configs" / "train.json"), "--dataset_dir", str(dataset), "--output_dir",
                                    str(out), *TINY, "--max_epochs", "1", "--epoch_length", "1", "--num_prompt_steps", "1",
                                    "--val_interval", "5", "--target_labels", "[1,2]"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and (out / "checkpoints" / "model.pt").is_file(), res.stderr[-3000:]
    p = ConfigParser()
    p.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "multi_gpu_train.json")])
    assert p["train#sampler"]["_target_"] == "DistributedSampler" and p["train#dataset"]["_target_"] == "PersistentDataset"
    assert any("init_process_group" in str(x) for x in p["train#run"]) and "trainer" in p["train"]


def test_gpu_overlay_trains_at_128_in_bf16_with_loader_workers():
    """bundle/configs/train_gpu.json over train.json: the paper's window, batch 4, bf16 autocast and a
    loader that keeps a GPU busy; the rest of the recipe stays train.json's."""
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "train_gpu.json")])
    assert p.get_parsed_content("roi_size") == [128, 128, 128] and p.get_parsed_content("batch_size") == 4
    assert p.get_parsed_content("train#trainer#amp_kwargs") == {"dtype": torch.bfloat16}
    assert p.get_parsed_content("model_config#roi_size") == [128, 128, 128]
    loader = p["train#dataloader"]
    assert p.get_parsed_content("num_workers") > 0 and loader["persistent_workers"] and loader["pin_memory"]
    assert p["train#trainer"]["num_prompt_steps"] == "@num_prompt_steps" and p["num_prompt_steps"] == 5


def test_train_batches_cases_that_carry_different_metadata(dataset):
    """Batch > 1 (the GPU overlay's 4): cases with and without ``target_classes``, of other patients and
    weights, collate into one batch in either order (only image and label leave the transforms)."""
    from monai.bundle import ConfigParser
    from monai.data import list_data_collate

    items = [{"image": str(dataset / "c1.nii.gz"), "label": str(dataset / "c1_seg.nii.gz"), "target_classes": [2],
              "weight": 0.5},
             {"image": str(dataset / "c0.nii.gz"), "label": str(dataset / "c0_seg.nii.gz"), "patient": "a",
              "modality": "CT"}]
    p = ConfigParser()
    p.read_config(str(BUNDLE / "configs" / "train.json"))
    p["roi_size"], p["target_labels"] = [32, 32, 32], [1, 2]
    transform = p.get_parsed_content("train#preprocessing")
    out = []
    for item in items:
        x = transform(dict(item))
        out.append(x[0] if isinstance(x, list) else x)
    for pair in (out, out[::-1]):
        batch = list_data_collate(pair)
        assert set(batch) == {"image", "label"} and batch["image"].shape == (2, 1, 32, 32, 32)
        assert batch["label"].shape == (2, 1, 32, 32, 32)


@pytest.mark.parametrize("make_saver", ["sat3d", "monai"])
def test_a_save_cut_short_leaves_the_previous_best_checkpoint_whole(tmp_path, monkeypatch, make_saver):
    """Catches in-place checkpoint writes: a save that dies half-way (a kill) must leave the last complete
    checkpoint_best_loss.pt, not a truncated file or none.  MONAI's own saver is the counter-example."""
    from ignite.engine import Engine, Events
    from monai.handlers import CheckpointSaver
    from sat3d.handlers import atomic_checkpoint_saver, checkpoint_file

    net = torch.nn.Linear(2, 1)
    make = atomic_checkpoint_saver if make_saver == "sat3d" else CheckpointSaver
    saver = make(save_dir=str(tmp_path), save_dict={"network": net}, save_key_metric=True, key_metric_name="loss",
                 key_metric_negative_sign=True, key_metric_filename="checkpoint_best_loss.pt")
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(loss=1.0 / e.state.epoch))
    saver.attach(engine)
    engine.run([0], max_epochs=2)
    best = tmp_path / "checkpoint_best_loss.pt"
    good = torch.load(best, weights_only=False)["weight"].clone()  # one object: saved as its state dict
    save = torch.save

    def killed(obj, f, *args, **kwargs):
        with (open(f, "wb") if isinstance(f, (str, os.PathLike)) else f) as out:
            out.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    with torch.no_grad():
        net.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        engine.run([0], max_epochs=3)  # epoch 3: a new best, whose save dies
    monkeypatch.setattr(torch, "save", save)
    if make_saver == "monai":
        assert not best.is_file() or checkpoint_file(best) is None  # what the kill leaves with MONAI's saver
        return
    assert checkpoint_file(best) == str(best) and torch.equal(torch.load(best, weights_only=False)["weight"], good)


def test_train_kill_resume_and_evaluate(dataset, tmp_path):
    cfg = str(BUNDLE / "configs" / "train.json")
    out = tmp_path / "run"
    args = ["--dataset_dir", str(dataset), "--output_dir", str(out), *TINY, "--batch_size", "1", "--epoch_length", "2",
            "--num_prompt_steps", "2", "--val_interval", "1", "--checkpoint_interval", "1", "--target_labels", "[1,2]"]
    proc = subprocess.Popen(bundle_cmd("train", cfg, *args, "--max_epochs", "200"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    ckpts = out / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        latest = latest_checkpoint(ckpts)
        if latest and _ckpt(latest)["trainer"]["iteration"] >= 5:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # a hard kill, as from a scheduler or power loss
    proc.wait()
    latest = latest_checkpoint(ckpts)  # the newest complete one: the kill may have truncated a file being written
    saved = _ckpt(latest)
    it = saved["trainer"]["iteration"]
    ep = it // saved["trainer"]["epoch_length"]  # ignite saves the iteration; the epoch follows from it
    assert it >= 5
    for name in ("checkpoint_best_loss.pt", "checkpoint_best_dice.pt", "model.pt"):
        assert (out / "checkpoints" / name).is_file(), name
    for name in ("checkpoint_best_loss.pt", "checkpoint_best_dice.pt"):  # they carry their saver's best score for a resume
        assert _ckpt(out / "checkpoints" / name)["checkpointer"]["_saved"], name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    res = subprocess.run(bundle_cmd("train", cfg, *args, "--max_epochs", str(ep + 1)), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {latest} at epoch {ep}, iteration {it}" in res.stdout + res.stderr
    final = _ckpt(latest_checkpoint(ckpts))
    assert final["trainer"]["iteration"] == (ep + 1) * final["trainer"]["epoch_length"] and final["trainer"]["iteration"] > it
    # the exported model.pt loads into the network and evaluates end to end
    ev = tmp_path / "eval"
    res = subprocess.run(
        bundle_cmd("evaluate", str(BUNDLE / "configs" / "evaluate.json"), "--dataset_dir", str(dataset),
                   "--output_dir", str(ev), "--ckpt_path", str(out / "checkpoints" / "model.pt"),
                   "--preset", "sat3d_tiny", "--roi_size", "[32,32,32]", "--clicks", "[0,1,3]", "--datalist_key", "training",
                   "--target_labels", "[1,2]"),
        capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    per_case = (ev / "per_case.csv").read_text().splitlines()
    assert len(per_case) == 1 + 2 * 3 * 2 and per_case[0].startswith("case,modality,target,method,clicks")
    assert "| method | modality | clicks | cases | DSC" in (ev / "summary.md").read_text()
    assert {"sat3d", "region_growing"} <= {line.split(",")[3] for line in per_case[1:]}
    assert (out / "checkpoints" / "model.pt").is_file()
    from sat3d.weights import read_config

    cfg = read_config(out / "checkpoints" / "model.pt")
    assert cfg["preset"] == "sat3d_tiny" and cfg["roi_size"] == [32, 32, 32] and cfg["spacing"] == [1.5, 1.5, 1.5]
    for png in ("dice_vs_clicks.png", "boxplot_dice.png"):
        data = (ev / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    res = subprocess.run(bundle_cmd("evaluate", str(BUNDLE / "configs" / "evaluate.json"), "--dataset_dir", str(dataset),
                                    "--output_dir", str(ev), "--require_weights", "false", *TINY[:4]),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "already holds" in res.stderr + res.stdout, "evaluation results must not be overwritten"


def test_data_parallel_two_processes_gloo(dataset, tmp_path):
    out = tmp_path / "ddp"
    cfg = f"['{BUNDLE / 'configs' / 'train.json'}','{BUNDLE / 'configs' / 'multi_gpu_train.json'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", "29517", "-m", "monai.bundle",
           "run", "train", "--config_file", cfg, "--dataset_dir", str(dataset), "--output_dir", str(out), *TINY,
           "--max_epochs", "1", "--epoch_length", "2", "--batch_size", "1", "--num_prompt_steps", "2", "--val_interval", "1",
           "--save_rank_weights", "true", "--target_labels", "[1,2]"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    w0 = torch.load(out / "final_weights_rank0.pt")
    w1 = torch.load(out / "final_weights_rank1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "ranks must end with identical weights"
    torch.manual_seed(0)
    init = build_sat3d("sat3d_tiny").state_dict()
    assert any(not torch.equal(w0[k], init[k]) for k in w0 if w0[k].is_floating_point()), "weights must have been trained"


# ---------------------------------------------------------------- metrics


def test_metrics_in_mm_and_empty_conventions():
    gt = np.zeros((30, 30, 30), bool)
    gt[10:20, 10:20, 10:20] = True
    pred = np.roll(gt, 2, axis=0)  # shifted by 2 voxels along the first axis
    m = segmentation_metrics(pred, gt, spacing=(3.0, 1.0, 1.0))
    assert m["hd95_mm"] == pytest.approx(6.0)
    assert m["dice"] == pytest.approx(0.8) and m["iou"] == pytest.approx(8 / 12)
    assert m["rve"] == pytest.approx(0.0) and 0 < m["assd_mm"] < 6.0
    empty = np.zeros_like(gt)
    assert segmentation_metrics(empty, gt, (1, 1, 1))["hd95_mm"] == float("inf")
    assert segmentation_metrics(empty, gt, (1, 1, 1))["rve"] == pytest.approx(-1.0)
    assert segmentation_metrics(empty, empty, (1, 1, 1))["dice"] == 1.0


class _ConfidentCritic(torch.nn.Module):
    def forward_logits(self, image, prob):
        return torch.full_like(prob, 20.0)


class _ThresholdNet(torch.nn.Module):
    """Stand-in for SAT3D whose mask is exactly ``image > 0.5`` (so the evaluated prediction is known)."""

    roi_size = (32, 32, 32)
    confidence_threshold = 0.3

    def __init__(self):
        super().__init__()
        self.critic = _ConfidentCritic()

    def encode(self, x):
        return x

    def decode(self, emb, points=None, point_labels=None, prev_mask=None, confidence=None, image=None):
        return 20.0 * (emb > 0.5).float() - 10.0, torch.full((emb.shape[0], 1), 0.9)  # IoU head says 0.9

    def judge(self, image, prob):
        return torch.ones_like(prob)


def test_evaluation_tables_use_the_true_spacing(tmp_path):
    """Catches HD95/ASSD in voxels instead of mm inside the evaluation: an anisotropic case whose prediction
    is shifted two voxels along the 3 mm axis must report HD95 6 mm and Dice 0.8 in per_case.csv."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
    from sat3d.data import SelectTargetd
    from sat3d.evaluation import InteractiveEvaluation
    from sat3d.inferer import SAT3DInferer

    gt = np.zeros((30, 30, 30), np.uint8)
    gt[10:20, 10:20, 10:20] = 1
    img = np.roll(gt, 2, axis=0).astype(np.float32)
    aff = np.diag([3.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(img, aff), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(gt, aff), str(tmp_path / "lab.nii.gz"))
    pre = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"]),
                   SelectTargetd("label", [1])])
    ev = InteractiveEvaluation([{"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}],
                               str(tmp_path / "ev"), _ThresholdNet(), pre, SAT3DInferer(roi_size=(32, 32, 32)),
                               clicks=[0], require_weights=False, baseline=False)
    ev.run()
    import csv

    rows = list(csv.DictReader((tmp_path / "ev" / "per_case.csv").open()))
    assert len(rows) == 1 and rows[0]["method"] == "sat3d"
    assert float(rows[0]["hd95_mm"]) == pytest.approx(6.0) and float(rows[0]["dice"]) == pytest.approx(0.8)
    expected = segmentation_metrics(img > 0.5, gt > 0, (3.0, 1.0, 1.0))
    assert float(rows[0]["assd_mm"]) == pytest.approx(expected["assd_mm"])
    summary = list(csv.DictReader((tmp_path / "ev" / "summary.csv").open()))
    assert float(summary[0]["dice_mean"]) == pytest.approx(0.8)
    # the IoU head's estimate is reported next to the true IoU (0.8 / 1.2), and how far off it is
    assert float(rows[0]["predicted_iou"]) == pytest.approx(0.9) and float(rows[0]["iou"]) == pytest.approx(2 / 3)
    assert float(summary[0]["predicted_iou_mae"]) == pytest.approx(0.9 - 2 / 3)


@pytest.mark.parametrize("setting, expected", [("auto", [(False, [0]), (True, [1, 3])]), (False, [(False, [0, 1, 3])]),
                                               (True, [(True, [0, 1, 3])])])  # (clicked mode, the K it serves)
def test_evaluation_drives_the_sessions_users_get(tmp_path, setting, expected):
    """The evaluation scores what users get: with clicked_windows_only "auto", K = 0 from an automatic session
    and K >= 1 from a session that starts with the clicks (clicked windows only), as folder inference and
    MONAI Label run a file with and without clicks."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
    from sat3d.data import SelectTargetd
    from sat3d.evaluation import InteractiveEvaluation
    from sat3d.inferer import SAT3DInferer

    gt = np.zeros((30, 30, 30), np.uint8)
    gt[10:20, 10:20, 10:20] = 1
    nib.save(nib.Nifti1Image(gt.astype(np.float32), np.eye(4)), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(gt, np.eye(4)), str(tmp_path / "lab.nii.gz"))
    pre = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"]),
                   SelectTargetd("label", [1])])
    ev = InteractiveEvaluation([{"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}],
                               str(tmp_path / "ev"), _ThresholdNet(), pre,
                               SAT3DInferer(roi_size=(32, 32, 32), clicked_windows_only=setting),
                               clicks=[0, 1, 3], require_weights=False, baseline=False)
    made = []
    original = ev._session

    def recording(clicked_windows_only=None):
        session = original(clicked_windows_only)
        made.append(session)
        return session

    ev._session = recording
    rows = ev.evaluate_case(ev.datalist[0])
    assert [r["clicks"] for r in rows] == [0, 1, 3]
    assert [session.clicked_mode for session in made] == [mode for mode, _ in expected]
    if setting == "auto":  # the clicked session starts from nothing: its first click is the user's on the tumour
        assert made[0].clicks == [] and made[1].clicks and made[1].clicks[0][1] == 1


def test_training_crops_keep_binary_labels_for_small_scans(tmp_path):
    """Catches padding the label with the image's pad value (uint8 -5 = 251 became 'tumour' in scans smaller
    than the ROI): training samples hold only 0/1 labels, also for multi-class host-only scans."""
    from monai.bundle import ConfigParser

    img, lab, aff = make_sphere_volume(shape=(20, 24, 16))
    nib.save(nib.Nifti1Image(img, aff), str(tmp_path / "i.nii.gz"))
    nib.save(nib.Nifti1Image((lab * 7).astype(np.uint8), aff), str(tmp_path / "l.nii.gz"))
    cp = ConfigParser()
    cp.read_config(str(BUNDLE / "configs" / "train.json"))
    tf = cp.get_parsed_content("train#preprocessing")
    for classes in ([7], []):
        for seed in range(3):
            tf.set_random_state(seed)
            out = tf({"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz"), "target_classes": classes})
            out = out[0] if isinstance(out, list) else out
            values = set(torch.unique(out["label"]).tolist())
            assert values <= {0.0, 1.0} and tuple(out["label"].shape[1:]) == tuple(cp["roi_size"]), (classes, values)


@pytest.mark.parametrize("anywhere_crop_prob, expect_air_crops", [(0.0, False), (0.2, True)])
def test_anywhere_crops_let_training_see_the_air_around_a_patient(tmp_path, anywhere_crop_prob, expect_air_crops):
    """Tumour and background crops are centred on tissue, so a window of air around a patient is never
    trained on (the automatic mode then fires there).  ``anywhere_crop_prob`` of the crops are centred
    anywhere: in a scan that is mostly air, some crops must then be almost all air, and none without it."""
    from monai.bundle import ConfigParser

    rng = np.random.default_rng(0)
    img = np.full((128, 128, 128), -1000.0, np.float32)
    img[:48, :48, :48] = 40.0 + 10.0 * rng.standard_normal((48, 48, 48))  # a patient in a corner
    lab = np.zeros(img.shape, np.uint8)
    lab[8:14, 8:14, 8:14] = 1
    aff = np.diag([1.5, 1.5, 1.5, 1.0])
    nib.save(nib.Nifti1Image(img, aff), str(tmp_path / "i.nii.gz"))
    nib.save(nib.Nifti1Image(lab, aff), str(tmp_path / "l.nii.gz"))
    cp = ConfigParser()
    cp.read_config(str(BUNDLE / "configs" / "train.json"))
    cp["anywhere_crop_prob"] = anywhere_crop_prob
    tf = cp.get_parsed_content("train#preprocessing")
    air_fractions = []
    for seed in range(30):
        tf.set_random_state(seed)
        out = tf({"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")})
        out = out[0] if isinstance(out, list) else out
        air_fractions.append(float((out["image"] < -2.0).float().mean()))
    assert (max(air_fractions) > 0.99) == expect_air_crops, air_fractions
    assert min(air_fractions) < 0.9  # tissue-centred crops (at least 13 % tissue here) are still drawn


@pytest.mark.parametrize("anywhere_crop_prob", [-0.1, 1.5])
def test_a_bad_anywhere_crop_prob_is_refused_by_name(anywhere_crop_prob):
    from monai.bundle import ConfigParser

    cp = ConfigParser()
    cp.read_config(str(BUNDLE / "configs" / "train.json"))
    cp["anywhere_crop_prob"] = anywhere_crop_prob
    from sat3d.folder_inference import _root_cause

    with pytest.raises(Exception) as info:
        cp.get_parsed_content("train#preprocessing")
    # MONAI's config parser re-raises with the ValueError as the cause
    assert f"anywhere_crop_prob must be in [0, 1], got {anywhere_crop_prob}" in _root_cause(info.value)

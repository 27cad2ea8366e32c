"""Alignment recovers known rotations, scales and linear maps, and rejects bad shapes."""
import numpy as np
import pytest
from scipy.stats import ortho_group

from ecos_jax.coopt import alignment


def _targets(m=200, d=8, seed=0):
    rng = np.random.default_rng(seed)
    # Anisotropic so the principal directions are well separated.
    return (rng.normal(size=(m, d)) * np.linspace(3.0, 0.5, d)).astype(np.float32)


def test_procrustes_recovers_rotation_and_scale():
    ref = _targets()
    q = ortho_group.rvs(8, random_state=1).astype(np.float32)
    source = 2.5 * ref @ q
    rot, s = alignment.orthogonal_procrustes(source, ref)
    np.testing.assert_allclose(rot, q.T, atol=1e-4)
    np.testing.assert_allclose(float(s), 1 / 2.5, rtol=1e-4)


def test_ridge_map_recovers_a_linear_map():
    ref = _targets()
    w = np.random.default_rng(2).normal(size=(8, 8)).astype(np.float32)
    # float32 normal equations: the error grows with cond(w)
    np.testing.assert_allclose(alignment.ridge_map(ref @ w, ref, 0.0), np.linalg.inv(w), atol=1e-2)


@pytest.mark.parametrize("method", ["procrustes", "linear"])
@pytest.mark.parametrize("reference", ["generalised", 0])
def test_fit_alignment_undoes_rotation_scale_and_offset(method, reference):
    base = _targets(m=300, d=8)
    q = ortho_group.rvs(8, random_state=3).astype(np.float32)
    rotated = 4.0 * base @ q + 7.0  # a second prior: another basis, scale and offset
    anchors, held_out = slice(0, 100), slice(100, 300)
    transforms = alignment.fit_alignment([base[anchors], rotated[anchors]], shared_dim=8, method=method,
                                         reference=reference)
    before = alignment.disagreement([base[held_out], rotated[held_out]])
    after = alignment.disagreement([transforms[0](base[held_out]), transforms[1](rotated[held_out])])
    assert before > 0.3
    assert after < 1e-3
    # Aligned targets are on the unit sphere.
    np.testing.assert_allclose(np.linalg.norm(transforms[1](rotated), axis=1), 1.0, atol=1e-5)


def test_projection_to_a_shared_dimension_aligns_different_widths():
    base = _targets(m=300, d=6)
    lift = np.linalg.qr(np.random.default_rng(4).normal(size=(10, 10)))[0][:6].astype(np.float32)  # [6, 10]
    wide = 3.0 * base @ lift  # the same information in a 10-d prior output
    transforms = alignment.fit_alignment([base[:100], wide[:100]], shared_dim=4)
    assert transforms[1].in_dim == 10 and transforms[1].out_dim == 4
    assert alignment.disagreement([transforms[0](base[100:]), transforms[1](wide[100:])]) < 1e-3


def test_without_basis_alignment_disagreement_stays():
    base = _targets(m=300, d=8)
    rotated = base @ ortho_group.rvs(8, random_state=5).astype(np.float32)
    transforms = alignment.fit_alignment([base[:100], rotated[:100]], shared_dim=8, method="none")
    # PCA fixes the basis only up to signs; sign flips leave an inconsistency in general.
    aligned = [transforms[0](base[100:]), transforms[1](rotated[100:])]
    assert alignment.disagreement(aligned) > 0.05


def test_cka_is_basis_invariant():
    base = _targets()
    rotated = base @ ortho_group.rvs(8, random_state=6).astype(np.float32)
    assert alignment.linear_cka(base, 3 * rotated) == pytest.approx(1.0, abs=1e-6)
    noise = np.random.default_rng(99).normal(size=base.shape)  # independent of base (seed 0)
    assert alignment.linear_cka(base, noise) < 0.2


def test_too_few_anchors_raises():
    with pytest.raises(ValueError, match="smaller than the target dimension"):
        alignment.fit_alignment([_targets(m=8), _targets(m=8)], shared_dim=8)


def test_prior_with_smaller_output_dimension_raises():
    with pytest.raises(ValueError, match="fewer than the shared dimension"):
        alignment.fit_alignment([_targets(d=8), _targets(d=4)], shared_dim=6)


def test_transform_rejects_other_dimension():
    tr = alignment.fit_alignment([_targets(d=8), _targets(d=8, seed=1)], shared_dim=4)[0]
    with pytest.raises(ValueError, match="output dimension differs"):
        tr(_targets(d=6))


def test_disagreement_needs_shared_dimension():
    with pytest.raises(ValueError, match="one shape"):
        alignment.disagreement([_targets(d=8), _targets(d=6)])

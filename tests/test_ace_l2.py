"""ACE-ℓ2 (the paper's ℓ2 row): the distance term dist_l2 · Σ_b ‖x − x'‖₂ of ACE ``main.py:get_dist_fn``."""

import torch

from cfx.methods.ace import distance_gradient


def test_l2_gradient_is_the_unit_difference_per_image_and_zero_at_the_start():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 8, 8)
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    grad = distance_gradient(x, x_adv, dist_l1=0.0, dist_l2=0.5)
    diff = (x_adv - x).flatten(1)
    expected = 0.5 * diff / diff.norm(dim=1, keepdim=True)  # per-image L2 over all pixels, summed over the batch
    assert torch.allclose(grad.flatten(1), expected, atol=1e-6)
    # PGD starts at x' = x: torch.linalg.norm's sub-gradient there is 0 (as upstream), not NaN
    assert torch.equal(distance_gradient(x, x.clone(), dist_l1=0.0, dist_l2=0.5), torch.zeros_like(x))
    both = distance_gradient(x, x_adv, dist_l1=0.001, dist_l2=0.5)
    assert torch.allclose(both, grad + 0.001 * torch.sign(x_adv - x), atol=1e-6)

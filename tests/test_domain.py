"""vqa.domain: the out-of-domain signal a bundle carries, fitted on its training clips' tokens."""
from __future__ import annotations

import pytest
import torch

from vqa.bundle import BundleError
from vqa.domain import DOMAIN_NAME, Domain


def test_clips_like_the_training_ones_are_in_and_others_out(tmp_path):
    g = torch.Generator().manual_seed(0)
    train = torch.randn(200, 6, 16, generator=g) * 0.5 + 1.0  # (N, K, H)
    domain = Domain.fit(train)
    fresh = torch.randn(50, 6, 16, generator=g) * 0.5 + 1.0
    assert sum(domain.contains(t) for t in fresh) >= 48  # unseen clips of the same kind
    assert not domain.contains(torch.randn(6, 16, generator=g) * 0.5 - 2.0)  # shifted
    assert not domain.contains(torch.randn(6, 16, generator=g) * 5.0 + 1.0)  # spread
    domain.save(tmp_path)
    again = Domain.load(tmp_path)
    assert again.threshold == domain.threshold and torch.equal(again.mean, domain.mean)


def test_a_bundle_without_a_domain_has_none_and_a_broken_one_is_named(tmp_path):
    assert Domain.load(tmp_path) is None
    (tmp_path / DOMAIN_NAME).write_bytes(b"\x00" * 20)
    with pytest.raises(BundleError, match=DOMAIN_NAME):
        Domain.load(tmp_path)
    with pytest.raises(ValueError, match="at least 2 clips"):
        Domain.fit(torch.zeros(1, 3, 4))

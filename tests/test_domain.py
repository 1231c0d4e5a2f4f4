"""vqa.domain: the out-of-domain signals a bundle carries, fitted on its training clips' tokens and pictures."""
from __future__ import annotations

import pytest
import torch

from vqa.api import VideoQA
from vqa.bundle import BundleError
from vqa.domain import DOMAIN_NAME, Domain, Pictures


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


def test_pictures_like_the_training_ones_are_in_and_others_out(tmp_path):
    g = torch.Generator().manual_seed(0)
    photo = torch.randn(64, generator=g)
    pans = lambda n: photo + 0.05 * torch.randn(n, 64, generator=g)  # noqa: E731  one photograph, panned
    drawings = lambda n: torch.randn(n, 64, generator=g)  # noqa: E731  a different drawing each
    pictures = Pictures.fit(torch.cat([pans(120), drawings(80)]))
    assert pictures.points.shape == (200, 64) and pictures.radius.shape == (200,)
    assert sum(pictures.distance(e) <= pictures.threshold for e in pans(20)) >= 19
    assert sum(pictures.distance(e) <= pictures.threshold for e in drawings(20)) >= 19  # new drawings too
    # footage like the photograph, but farther from it than its pans: nearer to it than drawings lie from
    # one another, so only a distance relative to the photograph's own neighbourhood tells
    footage = photo + 0.6 * photo.norm() / 8 * torch.randn(64, generator=g)
    apart = 1 - torch.nn.functional.normalize(footage, dim=0) @ pictures.points.T
    assert float(apart.min()) < float(pictures.radius[120:].median())
    assert pictures.distance(footage) > pictures.threshold
    with pytest.raises(ValueError, match="32 values"):
        pictures.distance(torch.zeros(32))
    same = Pictures.fit(photo.expand(10, 64))  # one picture in every clip: that picture is familiar
    assert same.distance(photo) <= same.threshold < same.distance(footage)

    tokens = torch.randn(200, 6, 16, generator=g)
    domain = Domain.fit(tokens)
    domain.pictures = pictures
    domain.save(tmp_path)
    again = Domain.load(tmp_path)
    assert again.pictures.threshold == pictures.threshold and torch.equal(again.pictures.radius, pictures.radius)
    torch.testing.assert_close(again.pictures.points, pictures.points, rtol=0, atol=2e-3)  # stored in fp16
    distance, picture, why = again.judge(tokens[0], pans(1)[0])
    assert distance <= again.threshold and picture <= pictures.threshold and why is None
    _, picture, why = again.judge(tokens[0], footage)
    assert picture > pictures.threshold and "picture is unlike" in why and "tokens" not in why
    _, _, why = again.judge(tokens[0] * 6 + 3, footage)
    assert "picture is unlike" in why and "clip tokens lie" in why

    # a domain from before picture embeddings (or without sight) judges by the tokens alone
    Domain(domain.mean, domain.std, domain.threshold).save(tmp_path)
    old = Domain.load(tmp_path)
    assert old.pictures is None
    assert old.judge(tokens[0], footage)[1:] == (None, None)


def test_the_default_bundle_tells_camera_footage_from_its_training_clips():
    from tests.conftest import shared_media
    from vqa.avsynth.examples import example_clips
    from vqa.perception import sight

    if sight.missing():
        pytest.skip(sight.missing())
    footage = shared_media("nasa_13013.mp4")
    qa = VideoQA.from_pretrained(perception=True)
    assert qa.domain is not None and qa.domain.pictures is not None
    unlike = qa.prepare(footage)
    assert unlike.in_domain is False and "picture is unlike" in unlike.unfamiliar
    avsynth = qa.prepare(example_clips(n=1)[0][0])  # a clip of the kind the bundle learned on
    assert avsynth.in_domain and avsynth.unfamiliar is None
    assert avsynth.picture_distance < qa.domain.pictures.threshold < unlike.picture_distance


def test_a_clip_that_does_not_decode_is_left_out_of_the_pictures(tmp_path):
    from tests.helpers import write_clip
    from vqa.domain import fit_pictures
    from vqa.perception import sight

    if sight.missing():
        pytest.skip(sight.missing())
    good = [write_clip(tmp_path / f"c{i}.mp4", tone_hz=300.0 + 100 * i) for i in range(2)]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    drawn, photographs = fit_pictures(good + [broken])  # the test clips are flat drawings
    assert drawn.points.shape == (2, 1280) and photographs is None
    assert fit_pictures(good[:1] + [broken]) == (None, None)  # too few to describe


def test_photographs_are_judged_against_the_training_photographs_and_drawings_against_the_drawings(tmp_path):
    g = torch.Generator().manual_seed(1)
    # drawings far apart from one another (large radii), photographs in tight groups (one picture's pans)
    drawings = torch.randn(60, 32, generator=g)
    photo = torch.randn(32, generator=g)
    pans = photo + 0.05 * torch.randn(40, 32, generator=g)
    footage = drawings[0] + 0.6 * torch.randn(32, generator=g)  # as near a drawing as drawings are to each other
    tokens = torch.randn(100, 4, 8, generator=g)
    domain = Domain(*_token_fields(tokens), Pictures.fit(drawings), Pictures.fit(pans), split=True)
    one = Domain(*_token_fields(tokens), Pictures.fit(torch.cat([drawings, pans])))  # before the split
    assert one.judge(tokens[0], footage, photographic=True)[2] is None  # footage passed as familiar
    _, picture, why = domain.judge(tokens[0], footage, photographic=True)
    assert picture > domain.photographs.threshold and "picture is unlike" in why
    assert domain.judge(tokens[0], photo + 0.05 * torch.randn(32, generator=g), photographic=True)[2] is None
    new_drawing = torch.randn(32, generator=g)
    assert domain.judge(tokens[0], new_drawing, photographic=False)[2] is None
    domain.save(tmp_path)
    again = Domain.load(tmp_path)
    assert again.split and again.photographs.threshold == domain.photographs.threshold
    assert again.judge(tokens[0], footage, photographic=True)[2] == why
    # no training clip looked photographic: every photographic clip is unfamiliar, and says why
    Domain(*_token_fields(tokens), Pictures.fit(drawings), None, split=True).save(tmp_path)
    drawn_only = Domain.load(tmp_path)
    assert drawn_only.split and drawn_only.photographs is None
    _, picture, why = drawn_only.judge(tokens[0], photo, photographic=True)
    assert picture == float("inf") and "looks like a photograph or camera footage, and fewer than 2" in why
    assert drawn_only.judge(tokens[0], new_drawing, photographic=False)[2] is None


def _token_fields(tokens):
    fitted = Domain.fit(tokens)
    return fitted.mean, fitted.std, fitted.threshold

"""Bundles: a round trip keeps every logit; damaged or mismatched files give errors naming them."""
import json
import shutil

import pytest
import torch

from tests.helpers import tiny_config
from vqa.api import VideoQA
from vqa.bundle import ADAPTER_WEIGHTS_NAME, CONFIG_NAME, WEIGHTS_NAME, BundleError, find_bundles


def logits_of(qa, seed=0):
    model = qa.model
    g = torch.Generator().manual_seed(seed)
    m = model.config.media
    frames = torch.randn(1, m.num_frames, 3, m.size, m.size, generator=g)
    mel = torch.randn(1, m.n_mels, model.config.encoder.audio_frames, generator=g)
    prompt = model.encode_prompt([{"role": "user", "content": "<video>\nWhat color is the object that beeps?"}])
    with torch.no_grad():
        embeds = model.embed(prompt.input_ids[None], prompt.video_mask[None], model.get_video_features(frames, mel))
        return model.llm(inputs_embeds=embeds).logits


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    qa = VideoQA.untrained(tiny_config(), seed=1)
    # make the LoRA non-trivial so the round trip checks it (B starts at zero)
    with torch.no_grad():
        for name, p in qa.model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    folder = tmp_path_factory.mktemp("bundle") / "b"
    qa.save_pretrained(folder)
    return qa, folder


def test_round_trip_gives_identical_logits(saved):
    qa, folder = saved
    for name in (CONFIG_NAME, WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME, "adapter_config.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["llm"] == qa.config.llm and config["encoder"]["fusion"] == "bottleneck"
    reloaded = VideoQA.from_pretrained(folder)
    assert reloaded.config == qa.config
    assert torch.equal(logits_of(qa), logits_of(reloaded))


def test_find_bundles(saved, tmp_path):
    _, folder = saved
    assert find_bundles(folder.parent) == [folder]
    assert find_bundles(tmp_path / "nothing") == []


@pytest.mark.parametrize("name", [WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME])
def test_truncated_weights_name_the_file(saved, tmp_path, name):
    _, folder = saved
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    data = (bad / name).read_bytes()
    (bad / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=name):
        VideoQA.from_pretrained(bad)


def test_garbage_weights_file(saved, tmp_path):
    _, folder = saved
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / WEIGHTS_NAME).write_bytes(b"\x00" * 64)
    with pytest.raises(BundleError, match="corrupt"):
        VideoQA.from_pretrained(bad)


def test_mismatched_config_names_tensor_and_shapes(saved, tmp_path):
    _, folder = saved
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / CONFIG_NAME).read_text())
    config["projector_hidden"] = 48
    (bad / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"projector.fc1.weight: shape \(64, 32\) in the file, \(48, 32\)"):
        VideoQA.from_pretrained(bad)


def test_bad_config_and_missing_folder(tmp_path, monkeypatch):
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="not a valid vqa config"):
        VideoQA.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"encoder": {"fusion": "sideways"}}))
    with pytest.raises(BundleError, match="fusion must be one of"):
        VideoQA.from_pretrained(tmp_path)
    monkeypatch.setenv("VQA_ADAPTERS_DIR", str(tmp_path / "none"))
    with pytest.raises(BundleError, match="vqa train"):
        VideoQA.from_pretrained()


def test_building_and_saving_a_bundle_warns_of_nothing(tmp_path):
    """A user's `vqa ask` or `vqa finetune` prints no library warnings they can do nothing about (peft's
    use of a deprecated transformers alias; a Hub lookup of a bundled LLM's name when saving)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qa = VideoQA.untrained(tiny_config(), seed=1)
        qa.save_pretrained(tmp_path / "b")
    assert [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, UserWarning))] == []

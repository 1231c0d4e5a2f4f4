"""Checkpoints: written whole or not at all, and a damaged newest one passed over for the newest intact one."""
from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from vqa.train import checkpoint
from vqa.train.checkpoint import MANIFEST, OPTIMIZER, STATE, WEIGHTS, CheckpointError


def write(out, step: int, value: float, keep: int = 3):
    """A checkpoint as the loop writes one: rng by every rank, then the main process's files, then publish."""
    tmp, final = checkpoint.staging_dir(out, step)
    tmp.mkdir(parents=True)
    for rank in (0, 1):
        checkpoint.save_rng(tmp, rank)
    weight = torch.full((4, 4), value)
    optimizer = {"state": {0: {"exp_avg": weight.clone()}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    checkpoint.save_main(tmp, {"w": weight}, optimizer, {"last_epoch": step}, {"progress": {"global_step": step}})
    checkpoint.publish(tmp, final, keep)
    return final


@pytest.fixture
def three(tmp_path):
    return tmp_path, [write(tmp_path, step, float(step)) for step in (10, 20, 30)]


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name", [WEIGHTS, OPTIMIZER, STATE, "rng-rank1.pt", MANIFEST])
def test_a_damaged_newest_checkpoint_is_named_and_the_one_before_is_used(three, name, caplog):
    out, folders = three
    assert checkpoint.latest_checkpoint(out) == folders[-1]
    truncate(folders[-1] / name)
    with caplog.at_level(logging.WARNING, logger="vqa.train.checkpoint"):
        got = checkpoint.latest_checkpoint(out)
    assert got == folders[-2]
    assert str(folders[-1] / name) in caplog.text and "damaged" in caplog.text
    weights, _, state = checkpoint.load(got)  # and the one chosen loads
    assert state["progress"]["global_step"] == 20 and float(weights["w"][0, 0]) == 20.0


def test_changed_bytes_of_the_same_length_are_caught(three, caplog):
    out, folders = three
    path = folders[-1] / WEIGHTS
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the file still loads, with one wrong weight
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="vqa.train.checkpoint"):
        assert checkpoint.latest_checkpoint(out) == folders[-2]
    assert "checksum" in caplog.text and WEIGHTS in caplog.text


def test_every_checkpoint_damaged_is_an_error_naming_each(three):
    out, folders = three
    for folder in folders:
        (folder / OPTIMIZER).unlink()
    with pytest.raises(CheckpointError, match="every checkpoint") as e:
        checkpoint.latest_checkpoint(out)
    assert all(str(f / OPTIMIZER) in str(e.value) for f in folders)


def test_a_checkpoint_from_before_manifests_is_checked_by_loading_it(three, caplog):
    out, folders = three
    for folder in folders:
        (folder / MANIFEST).unlink()
    assert checkpoint.latest_checkpoint(out) == folders[-1]
    (folders[-1] / STATE).write_text('{"progress": ')
    with caplog.at_level(logging.WARNING, logger="vqa.train.checkpoint"):
        assert checkpoint.latest_checkpoint(out) == folders[-2]
    assert str(folders[-1] / STATE) in caplog.text and "JSONDecodeError" in caplog.text


def test_publish_writes_a_manifest_and_leaves_no_staging_folder(three):
    out, folders = three
    manifest = json.loads((folders[-1] / MANIFEST).read_text())["files"]
    assert set(manifest) == {WEIGHTS, OPTIMIZER, STATE, "rng-rank0.pt", "rng-rank1.pt"}
    assert all(manifest[n]["bytes"] == os.path.getsize(folders[-1] / n) for n in manifest)
    assert sorted(p.name for p in checkpoint.checkpoints_dir(out).iterdir()) == [f.name for f in folders]


def test_a_save_killed_before_publish_leaves_no_newest_looking_checkpoint(three):
    out, folders = three
    tmp, final = checkpoint.staging_dir(out, 40)
    tmp.mkdir()
    checkpoint.save_rng(tmp, 0)
    (tmp / STATE).write_text("{}")  # killed here: weights never written, never renamed
    assert not final.exists() and checkpoint.latest_checkpoint(out) == folders[-1]

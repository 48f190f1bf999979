"""The frame cache: every image decoded once, pixel for pixel what decoding it for a model gave, in table order."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.data.competitions import STATE_FARM, load_spec
from pipeline.data.frames import fit_frame, gather, load_frames
from pipeline.data.images import CompetitionImages
from pipeline.paths import frames_dir, sample_dir
from pipeline.views.augment import view_transform
from pipeline.views.image_data import FrameImages
from tests.conftest import put_competition


@pytest.fixture(scope="module")
def framed(tmp_path_factory, tiny_competition):
    repo = tmp_path_factory.mktemp("frames")
    raw = put_competition(repo, tiny_competition)
    return repo, raw


def test_each_frame_is_the_reduced_size_decode_and_rows_follow_the_run_tables(framed):
    repo, raw = framed
    frames = load_frames(repo / frames_dir(STATE_FARM.slug))
    archive = CompetitionImages(raw, load_spec(STATE_FARM.slug, raw))
    for split in ("train", "test"):
        table = pd.read_csv(repo / sample_dir(STATE_FARM.slug) / f"{split}.csv", dtype=str)
        assert list(frames.ids[split]) == list(table.img) and frames.arrays[split].dtype == np.uint8
        for row in (0, len(table) - 1):
            np.testing.assert_array_equal(frames.arrays[split][row],
                                          archive.load_rgb(table.member[row], draft_size=(224, 224)))
    assert frames.meta["height"], frames.meta["width"] == frames.arrays["train"].shape[1:3]
    # Test rows come after every train row: pseudo-labelled test images train beside labelled ones.
    test_ids = list(frames.ids["test"][:2])
    assert list(frames.rows("test", test_ids)) == [len(frames.arrays["train"]), len(frames.arrays["train"]) + 1]


def test_a_view_of_a_cached_frame_is_the_view_decoding_for_it_gave(framed):
    repo, raw = framed
    frames = load_frames(repo / frames_dir(STATE_FARM.slug))
    archive = CompetitionImages(raw, load_spec(STATE_FARM.slug, raw))
    table = pd.read_csv(repo / sample_dir(STATE_FARM.slug) / "train.csv", dtype=str)
    view = view_transform("zoom", 32)
    batch = FrameImages(frames.both, frames.rows("train", table.img[:5]), view, 32).__getitems__(list(range(5)))
    for i in range(5):
        direct = view(image=archive.load_rgb(table.member[i], draft_size=(32, 32)))["image"]
        np.testing.assert_array_equal(batch["image"][i].numpy(), direct)


def test_gathering_rows_in_any_order_across_train_and_test_reads_the_same_frames_as_indexing(framed):
    repo, _ = framed
    frames = load_frames(repo / frames_dir(STATE_FARM.slug))
    both = np.concatenate([np.asarray(frames.arrays["train"]), np.asarray(frames.arrays["test"])])
    rows = np.random.default_rng(0).permutation(len(both))[:40]
    rows = np.r_[rows, np.arange(5, 12), len(both) - 3]  # scattered rows, a run in order, the last test rows
    np.testing.assert_array_equal(gather(frames.both, rows), both[rows])


def test_an_image_missing_from_the_cache_is_named(framed):
    repo, _ = framed
    frames = load_frames(repo / frames_dir(STATE_FARM.slug))
    with pytest.raises(Exception, match="no frame of train image 'img_nowhere.jpg'; `dvc repro frames`"):
        frames.rows("train", ["img_nowhere.jpg"])


def test_frames_of_another_size_are_resized_to_the_split_frame_shape():
    odd = np.zeros((300, 200, 3), np.uint8)
    assert fit_frame(odd, (240, 320)).shape == (240, 320, 3)
    same = np.ones((240, 320, 3), np.uint8)
    assert fit_frame(same, (240, 320)) is same


def test_a_frame_cache_the_disk_cannot_hold_is_refused_before_a_byte_is_written(repo_copy, tiny_competition,
                                                                                  run_stage, monkeypatch):
    import os
    from types import SimpleNamespace

    put_competition(repo_copy, tiny_competition, frames=False)
    free = 10_000  # bytes: far less than the tiny stand-in's frames
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=free // 4096, f_frsize=4096))
    status, lines = run_stage(repo_copy, "frames")
    target = frames_dir(STATE_FARM.slug)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {target}: the frame cache needs ") and "bytes" in lines[0], lines[0]
    assert f"{free // 4096 * 4096:,} bytes free there" in lines[0]
    assert not (repo_copy / target).exists() and not list((repo_copy / target).parent.glob(".*tmp*"))

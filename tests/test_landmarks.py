"""dlib detection, 68-point landmarks, embeddings and the tracker, on the shared photos/videos."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from jr2net.errors import NoFaceError
from jr2net.face.landmarks import (
    FaceDetection,
    LandmarkTracker,
    box_from_landmarks,
    detect_faces,
    detect_largest_face,
    face_embedding,
    interocular_distance,
    models_dir,
)
from jr2net.io.images import load_image
from jr2net.io.video import VideoReader


def _assert_plausible(det: FaceDetection, shape: tuple[int, ...]) -> None:
    lm = det.landmarks
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    x0, y0, x1, y1 = det.box
    w = x1 - x0
    # Landmarks lie around the box; jaw may leave it a little.
    assert (lm[:, 0] > x0 - 0.3 * w).all() and (lm[:, 0] < x1 + 0.3 * w).all()
    assert (lm[:, 1] > y0 - 0.3 * w).all() and (lm[:, 1] < y1 + 0.3 * w).all()
    # Anatomy in image coordinates (y down): brows above eyes above nose tip above mouth above chin.
    brow_y, eye_y = lm[17:27, 1].mean(), lm[36:48, 1].mean()
    nose_y, mouth_y, chin_y = lm[33, 1], lm[48:68, 1].mean(), lm[8, 1]
    assert brow_y < eye_y < nose_y < mouth_y < chin_y
    # The subject's right eye (36-41) is on the image's left.
    assert lm[36:42, 0].mean() < lm[42:48, 0].mean()
    iod = interocular_distance(lm)
    assert 0.3 * w < iod < 1.0 * w


def test_model_files_are_found_without_importing_the_package():
    import sys

    d = models_dir()
    assert (d / "shape_predictor_68_face_landmarks.dat").is_file()
    assert (d / "dlib_face_recognition_resnet_model_v1.dat").is_file()
    assert "face_recognition_models" not in sys.modules


@pytest.mark.parametrize(
    "name", ["obama.jpg", "biden.jpg", "s12.jpg", "d9.jpg", "alex-lacamoire.png"]
)
def test_single_face_photos_give_one_plausible_face(images_dir, name):
    img = load_image(images_dir / name)
    dets = detect_faces(img)
    assert len(dets) == 1
    _assert_plausible(dets[0], img.shape)
    assert dets[0].score > 0


def test_dog_photo_raises_no_face(images_dir):
    img = load_image(images_dir / "s31.jpg")
    assert detect_faces(img) == []
    with pytest.raises(NoFaceError, match="no face found in the image"):
        detect_largest_face(img)


def test_two_people_returns_largest_and_logs(images_dir, caplog):
    img = load_image(images_dir / "two_people.jpg")
    dets = detect_faces(img)
    assert len(dets) == 2
    with caplog.at_level(logging.INFO, logger="jr2net.face"):
        best = detect_largest_face(img)
    assert "several faces (2): the largest is used" in caplog.text
    assert best.box == dets[0].box
    for d in dets:
        _assert_plausible(d, img.shape)


def test_interocular_distance_uses_outer_eye_corners():
    lm = np.zeros((68, 2), np.float32)
    lm[36] = (10, 20)
    lm[45] = (13, 24)
    assert interocular_distance(lm) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="landmarks68"):
        interocular_distance(np.zeros((5, 2)))


def test_embeddings_separate_identities(images_dir):
    def emb(name):
        img = load_image(images_dir / name)
        return face_embedding(img, detect_largest_face(img))

    obama, obama_partial, biden = emb("obama.jpg"), emb("obama_partial_face.jpg"), emb("biden.jpg")
    assert obama.shape == (128,) and obama.dtype == np.float32
    assert np.linalg.norm(obama - obama_partial) < 0.6
    assert np.linalg.norm(obama - biden) > 0.6


def test_small_faces_in_low_resolution_video_are_found(videos_dir):
    with VideoReader(videos_dir / "short_hamilton_clip.mp4") as reader:
        frames = [f for i, f in enumerate(reader) if i in (100, 150, 200)]
    for f in frames:
        dets = detect_faces(f)
        assert len(dets) >= 1
        _assert_plausible(dets[0], f.shape)


def test_detection_validates_input():
    with pytest.raises(TypeError, match="image"):
        detect_faces(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="image"):
        detect_faces(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="upsample"):
        detect_faces(np.zeros((64, 64, 3), np.uint8), upsample=-1)


def test_tracker_follows_d0_with_one_detection(videos_dir):
    with VideoReader(videos_dir / "d0.mp4") as reader:
        frames = reader.read_all()
    tracker = LandmarkTracker()
    results = [tracker.update(f) for f in frames]
    assert all(r is not None for r in results)
    assert tracker.detections <= 2
    # Tracked landmarks agree with fresh detections (checked on a few frames).
    for i in (10, 40, 77):
        ref = detect_largest_face(frames[i]).landmarks
        err = np.sqrt(((ref - results[i].landmarks) ** 2).sum(1).mean())
        assert err < 0.05 * interocular_distance(ref)


def test_tracker_drops_the_face_after_a_cut_to_no_face(videos_dir, images_dir):
    with VideoReader(videos_dir / "d0.mp4") as reader:
        frames = reader.read_all(max_frames=5)
    h, w = frames[0].shape[:2]
    dog = np.asarray(Image.fromarray(load_image(images_dir / "s31.jpg")).resize((w, h)))
    tracker = LandmarkTracker(verify_every=4)
    out = [tracker.update(f) for f in frames + [dog] * 6]
    assert all(r is not None for r in out[:5])
    assert all(r is None for r in out[-2:])  # lost within verify_every frames of the cut
    assert tracker.losses == 1


@pytest.mark.parametrize("shift", [50, 150])
def test_tracker_follows_a_sudden_jump(videos_dir, shift):
    with VideoReader(videos_dir / "d0.mp4") as reader:
        frames = reader.read_all(max_frames=6)
    shifted = [np.roll(f, shift, axis=1) for f in frames[3:]]
    tracker = LandmarkTracker()
    out = [tracker.update(f) for f in frames[:3] + shifted]
    assert all(r is not None for r in out)
    assert tracker.detections <= 2
    jump = out[3].landmarks[:, 0].mean() - out[2].landmarks[:, 0].mean()
    assert abs(jump - shift) < 10


def test_box_from_landmarks_matches_detector_box(images_dir):
    img = load_image(images_dir / "obama.jpg")
    det = detect_largest_face(img)
    box = box_from_landmarks(det.landmarks)
    side = det.box[2] - det.box[0]
    assert np.allclose(box, det.box, atol=0.2 * side)


def test_the_cached_detector_finds_what_dlibs_own_finds(images_dir, tmp_path, monkeypatch):
    """The HOG detector is loaded from its binary form in the user cache (written on first use;
    a corrupt file is rebuilt): same boxes, scores and sub-detector ids as
    ``dlib.get_frontal_face_detector()``."""
    import dlib

    from jr2net.face import landmarks

    monkeypatch.setenv("JR2NET_CACHE", str(tmp_path))
    built = landmarks._frontal_face_detector(dlib)
    (cached_file,) = (tmp_path / "dlib").glob("frontal_face_detector_*.svm")
    cached = landmarks._frontal_face_detector(dlib)
    reference = dlib.get_frontal_face_detector()
    found = 0
    for name in ("obama.jpg", "two_people.jpg", "s31.jpg"):
        path = images_dir / name
        if not path.is_file():
            continue
        gray = np.asarray(Image.open(path).convert("L"))
        for upsample in (0, 1):
            want = reference.run(gray, upsample, -0.3)
            for detector in (built, cached):
                got = detector.run(gray, upsample, -0.3)
                assert [str(r) for r in got[0]] == [str(r) for r in want[0]]
                assert got[1] == want[1] and got[2] == want[2]
            found += len(want[0])
    assert found > 0
    cached_file.write_bytes(b"not a detector")
    rebuilt = landmarks._frontal_face_detector(dlib)
    gray = np.asarray(Image.open(images_dir / "obama.jpg").convert("L"))
    assert [str(r) for r in rebuilt(gray, 0)] == [str(r) for r in reference(gray, 0)]
    assert cached_file.stat().st_size > 10_000  # written again


def test_preload_in_background_loads_both_models_once():
    from jr2net.face import landmarks as lm

    thread = lm.preload_in_background()
    thread.join(timeout=60)
    assert not thread.is_alive()
    predictor = lm._models["predictor"]
    assert lm._models["detector"] is not None
    assert lm._get("predictor") is predictor  # the first real use gets the preloaded model


@pytest.mark.parametrize("video,start,scale", [("d0.mp4", 0, 1.0), ("short_hamilton_clip.mp4", 90, 1.0),
                                               ("d11.mp4", 0, 2.1)])
def test_tracker_crops_give_the_full_frame_landmarks(monkeypatch, video, start, scale):
    """Tracking converts only crops around the face to grayscale; the landmarks are the same
    as from the whole frame's grayscale, frame by frame (and on upscaled, 1080p-sized frames)."""
    import cv2

    from jr2net.face import landmarks as lm
    from jr2net.io.video import VideoReader
    from jr2net.paths import shared_path

    frames = VideoReader(shared_path("data", "videos", video)).read_all()[start : start + 40]
    if scale != 1.0:
        frames = [cv2.resize(f, None, fx=scale, fy=scale) for f in frames]

    def track() -> list:
        t = lm.LandmarkTracker()
        return [None if (d := t.update(f)) is None else d.landmarks.copy() for f in frames]

    fast = track()
    monkeypatch.setattr(lm, "_predict_in_crop",
                        lambda frame, box: lm._predict(np.asarray(lm._gray(frame)), box))
    full = track()
    assert sum(x is not None for x in fast) >= 30
    for a, b in zip(fast, full, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)

"""benchmarks/dataload.py's own parts: the cached JPEG folders, the torch peer's affine and the verdicts.
Nothing here measures a speed."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import dataload


class _Middle:
    """An rng whose draws are the middle of each range: no rotation, shift or zoom."""

    def uniform(self, low: float, high: float) -> float:
        return (low + high) / 2


def _args(**extra: object) -> argparse.Namespace:
    return argparse.Namespace(repeats=1, cores=[0], workers=1, quick=True, warmup=1, batches=2, **extra)


def test_jpeg_folder_is_generated_once_in_class_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = dataload.jpeg_folder(20, small=True)
    files = sorted(folder.rglob("*.jpg"))
    assert folder.parent == tmp_path / "hvdtrain" / "bench-jpegs" and len(files) == 20
    assert len({f.parent.name for f in files}) == dataload.CLASSES
    with Image.open(files[0]) as img:
        assert img.size == (dataload.SMALL, dataload.SMALL) and img.mode == "RGB"
    stamp = files[0].stat().st_mtime_ns
    assert dataload.jpeg_folder(20, small=True) == folder and files[0].stat().st_mtime_ns == stamp


def test_affine_without_rotation_shift_or_zoom_keeps_the_image() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    out = dataload._affine(Image.fromarray(pixels), _Middle())  # type: ignore[arg-type]
    assert np.array_equal(np.asarray(out), pixels)


def test_sections_state_the_ratios_and_whether_the_targets_are_met(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataload, "machine_line", lambda: "1 cores (test)")
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.jpg")
    run = {"cpu_ms_per_img": 2.0, "total_mb": 100.0}
    rates = {"hvdtrain": [{"img_s": 1000.0, **run}], "keras": [{"img_s": 150.0, **run}],
             "torch": [{"img_s": 900.0, **run}]}
    text = dataload.throughput_section(_args(), rates, tmp_path, (0.5, 0.6))
    assert "| 1,000 | 1.00 |" in text and "| 150 | 6.67 |" in text and "| 900 | 1.11 |" in text
    assert "fastest peer: met, 1.11x (torch); 5x flow_from_directory: met, 6.7x." in text
    rates["torch"][0]["img_s"] = 1100.0
    text = dataload.throughput_section(_args(), rates, tmp_path, (0.5, 0.6))
    assert "fastest peer: not met, 0.91x (torch); 5x flow_from_directory: met, 6.7x." in text

    def epoch(main: float, children: float) -> list[dict[str, float]]:
        return [{"images": 10.0, "seconds": 1.0, "main_mb": main, "workers_mb": children,
                 "total_mb": main + children, "processes": 3.0}]

    runs = {("image_folder", 1000): epoch(50, 100), ("image_folder", 50000): epoch(55, 105),
            ("shards", 1000): epoch(50, 100), ("shards", 50000): epoch(70, 120)}
    text = dataload.rss_section(_args(sizes=[1000, 50000], sources=["image_folder", "shards"]), runs)
    assert ("within 10% from 1,000 to 50,000; the ratio of the totals): image_folder: met, 1.067 (main process "
            "alone 1.100); shards: not met, 1.267 (main process alone 1.400)." in text)

"""CPU time of each face detector on one 640x480 frame, single-threaded: a figure that a busy machine
distorts less than wall time.

    python bench/detector_cpu.py [--repeats 25]

The frame is the two-face example photo resized to 640x480. onnxruntime and OpenCV run on one thread;
``time.process_time`` around ``detect`` is the CPU time of this process. Prints a Markdown table (faces
found, median CPU ms).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import cv2

from fer_runtime import read_image
from fer_runtime.detectors import BlazeFaceDetector, HaarDetector
from fer_runtime.frames import VIDEO_DETECT_MAX_SIDE

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "images" / "photo_two_faces.jpg"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=25)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    frame = cv2.resize(read_image(PHOTO), (640, 480))
    engines = {"blazeface, whole frame (tiles=0; video default)": BlazeFaceDetector(threads=1, tiles=0),
               "blazeface, with tiles (tiles=1; image default)": BlazeFaceDetector(threads=1, tiles=1),
               "haar, 320 px copy (video)": HaarDetector(max_side=VIDEO_DETECT_MAX_SIDE),
               "haar, full frame (images)": HaarDetector()}
    print(f"Face detection on one 640x480 frame, one thread; {os.cpu_count()} CPU ({platform.machine()}), "
          f"OpenCV {cv2.__version__}; median of {args.repeats}.\n")
    print("| detector | faces | CPU ms |")
    print("|---|---:|---:|")
    for name, engine in engines.items():
        for _ in range(3):
            engine.detect(frame)
        cpu = []
        for _ in range(args.repeats):
            t = time.process_time()
            engine.detect(frame)
            cpu.append((time.process_time() - t) * 1000)
        print(f"| {name} | {len(engine.detect(frame))} | {statistics.median(cpu):.1f} |")


if __name__ == "__main__":
    main()

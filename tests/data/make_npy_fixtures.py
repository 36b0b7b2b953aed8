#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes the .npy fixtures under tests/data/npy/ with NumPy itself (np.save / numpy.lib.format), so that the
reader is tested against the bytes NumPy writes: arrays torchfit reads, and arrays it must refuse.

Run from any directory, with a Python 3 that has NumPy (Debian: python3-numpy):
    python3 tests/data/make_npy_fixtures.py
"""
import os

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "npy")
os.makedirs(OUT, exist_ok=True)


def save(name, array, version=None):
    path = os.path.join(OUT, name)
    if version is None:
        np.save(path, array)
    else:
        with open(path, "wb") as f:
            np.lib.format.write_array(f, array, version=version)


# Read: values the test checks exactly.
save("float32_2x3.npy", np.arange(6, dtype="<f4").reshape(2, 3) / 4)
save("int64_4.npy", np.array([-3, 0, 7, 2**40], dtype="<i8"))
save("uint8_3x2.npy", np.array([[0, 1], [128, 255], [7, 9]], dtype="u1"))
save("bool_3.npy", np.array([True, False, True]))
save("float64_scalar.npy", np.array(2.5, dtype="<f8"))
save("float16_2.npy", np.array([1.5, -2.0], dtype="<f2"))
save("int32_v2.npy", np.arange(5, dtype="<i4"), version=(2, 0))
save("empty_0x3.npy", np.zeros((0, 3), dtype="<f4"))
# Refused, each for a reason the message names.
save("fortran.npy", np.asfortranarray(np.arange(6, dtype="<f4").reshape(2, 3)))
save("big_endian.npy", np.arange(3, dtype=">i4"))
save("uint16.npy", np.arange(3, dtype="<u2"))
save("structured.npy", np.zeros(2, dtype=[("x", "<f4"), ("y", "<i4")]))
save("complex.npy", np.zeros(2, dtype="<c8"))

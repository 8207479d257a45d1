"""Scalar functions the compiled kernels call per element: ``tanh`` per dtype, typed constants.

Why not ``math.tanh`` / ``np.tanh`` inside the kernels: without Intel's SVML (an extra
package numba uses when present) LLVM turns them into one call of the C library per
element, and the loop that holds them does not vectorise.  The functions here are plain
arithmetic (multiply-adds, one division, a rounding, an integer shift, conditional
expressions), so the kernels' loops over the batch vectorise with them inlined.

Accuracy (checked by ``tests/engines/test_numba.py`` against ``np.tanh`` in float64):

* **float64**: Cephes' rational form ``x + x s P(s) / Q(s)`` (``s = x^2``) for
  ``|x| < 0.625``; above, ``(e - 1) / (e + 1)`` with ``e = exp(2 |x|)`` written as
  ``2^n (Q + p) / (Q - p)`` (Cephes' ``exp``; ``2^n`` an integer shift, exact for
  ``n <= 58``), so each branch costs one division.  Largest error found: 3 units in the
  last place (relative 4.5e-16), so float64 results equal the generic engine's to about
  1e-15 relative, far inside the required 1e-12.
* **float32**: Eigen's rational approximation ``x P(x^2) / Q(x^2)`` (degrees 13/6) with
  the argument clamped to ``|x| <= 7.9053``.  Largest error found over every 3rd float32
  in ``[2^-30, 12]`` and its negatives: 6.9 units in the last place of the float32
  result, 4.1e-7 relative (about 3.5 float32 epsilons, against 1.4 units for ``np.tanh``
  in float32).  This is below what one float32 LSTM step already loses in its matrix
  products: the float32 engine's outputs and gradients stay as close to the float64
  reference as the generic float32 engine's (see the tests).

The clamps are conditional expressions, not ``min``/``max``: those vectorise.  The
kernels are compiled with ``error_model="numpy"`` (division by zero gives ``inf``/``nan``
instead of raising): Python's check would stop the vectorisation of every loop that
divides.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

# --------------------------------------------------------------------------- float32

_F = np.float32
_A1, _A3, _A5, _A7, _A9, _A11, _A13 = (
    _F(4.89352455891786e-03),
    _F(6.37261928875436e-04),
    _F(1.48572235717979e-05),
    _F(5.12229709037114e-08),
    _F(-8.60467152213735e-11),
    _F(2.00018790482477e-13),
    _F(-2.76076847742355e-16),
)
_B0, _B2, _B4, _B6 = (
    _F(4.89352518554385e-03),
    _F(2.26843463243900e-03),
    _F(1.18534705686654e-04),
    _F(1.19825839466702e-06),
)
_CLAMP32 = _F(7.90531110763549805)  # |tanh| rounds to 1 in float32 beyond this
_NEG_CLAMP32 = _F(-7.90531110763549805)


def _tanh_float32(x):
    """Eigen's rational ``tanh`` for float32 (see the module docstring for its error)."""
    upper = _CLAMP32 if x > _CLAMP32 else x
    y = _NEG_CLAMP32 if upper < _NEG_CLAMP32 else upper
    y2 = y * y
    p = ((((((_A13 * y2 + _A11) * y2 + _A9) * y2 + _A7) * y2 + _A5) * y2 + _A3) * y2 + _A1) * y
    q = ((_B6 * y2 + _B4) * y2 + _B2) * y2 + _B0
    return p / q


# --------------------------------------------------------------------------- float64

# Cephes tanh, |x| < 0.625: tanh x = x + x s P(s) / Q(s), s = x^2 (Q monic).
_TP0, _TP1, _TP2 = -9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3
_TQ0, _TQ1, _TQ2 = 1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3
# Cephes exp on |r| <= ln(2)/2: exp(r) = (Q + p) / (Q - p), p = r P(r^2).
_EP0, _EP1, _EP2 = 1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1
_EQ0, _EQ1, _EQ2, _EQ3 = (
    3.00198505138664455042e-6,
    2.52448340349684104192e-3,
    2.27265548208155028766e-1,
    2.00000000000000000009e0,
)
_LOG2E = 1.4426950408889634073599
_LN2_HI = 6.93145751953125e-1
_LN2_LO = 1.42860682030941723212e-6
_SMALL64 = 0.625
_MAX_2X = 40.0  # exp(40) = 2^57.7: tanh is 1 in float64 long before, 2^n still exact


def _tanh_float64(x):
    """Accurate ``tanh`` for float64 in plain arithmetic (see the module docstring)."""
    a = -x if x < 0.0 else x
    # |x| < 0.625: x (Q + s P) / Q
    s = x * x
    p_small = (_TP0 * s + _TP1) * s + _TP2
    q_small = ((s + _TQ0) * s + _TQ1) * s + _TQ2
    num_small = x * (q_small + s * p_small)
    # |x| >= 0.625: (e - 1) / (e + 1), e = exp(2a) = 2^n (Q + p) / (Q - p)
    y0 = 2.0 * a
    y = _MAX_2X if y0 > _MAX_2X else y0
    n = np.floor(_LOG2E * y + 0.5)
    r = (y - n * _LN2_HI) - n * _LN2_LO
    rr = r * r
    p = r * ((_EP0 * rr + _EP1) * rr + _EP2)
    q = ((_EQ0 * rr + _EQ1) * rr + _EQ2) * rr + _EQ3
    up = np.float64(np.int64(1) << np.int64(n)) * (q + p)
    down = q - p
    num_large_abs = up - down
    num_large = -num_large_abs if x < 0.0 else num_large_abs
    small = a < _SMALL64
    num = num_small if small else num_large
    den = q_small if small else up + down
    return num / den


# --------------------------------------------------------------------------- dispatch by type


def tanh(x):
    """``tanh`` of a float32 or float64 scalar, inside compiled code (see the module docstring)."""
    raise NotImplementedError("only callable from numba-compiled code")


@overload(tanh, jit_options={"error_model": "numpy"})
def _tanh_overload(x):
    if x == types.float32:
        return _tanh_float32
    if x == types.float64:
        return _tanh_float64
    return None


def typed(like, value):
    """``value`` as a scalar of ``like``'s float type, inside compiled code.

    Why: a Python float literal is float64 in numba, and ``float32 * 0.5`` would be
    computed in float64, with conversions that stop the float32 loops from vectorising.
    """
    raise NotImplementedError("only callable from numba-compiled code")


@overload(typed)
def _typed_overload(like, value):
    if like == types.float32:
        cast = np.float32
    elif like == types.float64:
        cast = np.float64
    else:
        return None

    def impl(like, value):
        return cast(value)

    return impl

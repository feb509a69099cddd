"""The phantom's acute-blood lesion: its random description and its cross-section on each slice.

A positive patient's lesion lives on a contiguous run of ``L`` slices (its label: 1 on those
slices). How it changes along the run is the lesion profile:

- ``taper`` (the default, as every earlier release): the cross-section scales by
  ``0.6 + 0.4 sin(pi (j + 1/2) / L)`` on run slice ``j`` at full contrast;
- ``3d``: an ellipsoid whose z semi-axis spans the run. Slice ``j`` cuts it at
  ``t = (j + 1/2 - L/2) / (L/2)``; the cross-section scales by ``s = sqrt(1 - t^2)`` (at least
  0.45) and, as the slice's partial volume of blood shrinks, the contrast by ``s^2`` (at least
  0.3): faint ends, which a reader (or a 2.5D model) believes because the neighbours show more.

The random draws are the same for both profiles, so a seed gives the same patients and lesion
shapes; only the per-slice scaling differs.
"""

from __future__ import annotations

import numpy as np

from neurocache.errors import InputError
from neurocache.synth.fields import _bbox, _lerp_, _soft
from neurocache.synth.seeds import _F32
from neurocache.synth.truth import LesionTruth

#: The lesion profiles along the run (``neurocache synth --lesions``).
LESION_PROFILES = ("taper", "3d")


def lesion_scale(j: int, run_len: int, profile: str) -> tuple[float, float]:
    """(cross-section scale, contrast scale) of the lesion on run slice ``j`` (0-based) of ``run_len``."""
    if profile == "taper":
        return (0.6 + 0.4 * float(np.sin(np.pi * (j + 0.5) / run_len)) if run_len > 1 else 1.0), 1.0
    if profile != "3d":
        raise InputError(f"lesions={profile!r}: choose one of {', '.join(LESION_PROFILES)}")
    t = (j + 0.5 - run_len / 2.0) / (run_len / 2.0) if run_len > 1 else 0.0
    s = float(np.sqrt(max(0.0, 1.0 - t * t)))
    return max(0.45, s), max(0.3, s * s)


class _LesionMixin:
    """Lesion drawing and rendering for :class:`neurocache.synth.phantom._PatientRenderer`
    (uses its head geometry: ``a``, ``b``, ``cos_th``/``sin_th``, ``xr``/``yr``, ``sul_a``, ``mottle``)."""

    def _make_lesion(self, rng: np.random.Generator) -> dict:
        """Random lesion description (shape in px / normalised head coords, HU)."""
        subdural = rng.random() < 0.25
        subtle = (not subdural) and rng.random() < 0.25
        if subtle:  # small, low-contrast parenchymal blob
            intensity, r_frac = float(rng.uniform(46.0, 56.0)), float(rng.uniform(0.02, 0.035))
        elif subdural:  # crescent thickness as a fraction of head width
            intensity, r_frac = float(rng.uniform(55.0, 85.0)), float(rng.uniform(0.03, 0.08))
        else:
            intensity, r_frac = float(rng.uniform(55.0, 90.0)), float(rng.uniform(0.04, 0.09))
        r_px = max(1.2, r_frac * 2.0 * self.a)
        les: dict = {"intensity": intensity, "r_px": r_px, "subtle": subtle}
        if subdural:
            les["kind"] = "subdural"
            th0 = float(rng.uniform(0, 2 * np.pi))
            half = float(rng.uniform(0.35, 0.8))  # rad
            c = self.cos_th * _F32(np.cos(th0)) + self.sin_th * _F32(np.sin(th0))
            s = self.sin_th * _F32(np.cos(th0)) - self.cos_th * _F32(np.sin(th0))
            delta = np.abs(np.arctan2(s, c))
            les["taper"] = np.clip(np.cos(_F32(np.pi / 2.0 / half) * np.minimum(delta, _F32(half))), 0, 1) ** _F32(0.7)
        else:
            les["kind"] = "blob"
            rho_max = max(0.0, 0.8 - r_px / self.a)
            rho_c = rho_max * float(np.sqrt(rng.uniform(0.0, 1.0)))
            ang = float(rng.uniform(0, 2 * np.pi))
            les["uv"] = (rho_c * np.cos(ang), rho_c * np.sin(ang))
            parts = [(0.0, 0.0, r_px * rng.uniform(0.7, 1.0), r_px * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi))]
            for _ in range(int(rng.integers(1, 4))):
                off_r = r_px * rng.uniform(0.2, 0.6)
                off_a = rng.uniform(0, 2 * np.pi)
                parts.append(
                    (
                        off_r * np.cos(off_a),
                        off_r * np.sin(off_a),
                        r_px * rng.uniform(0.4, 0.8),
                        r_px * rng.uniform(0.4, 0.8),
                        rng.uniform(0, np.pi),
                    )
                )
            les["parts"] = [tuple(float(v) for v in p_) for p_ in parts]
            les["drift"] = [float(v) for v in rng.normal(0.0, 0.08 * r_px, size=2)]
        return les

    def _lesion(self, brain: np.ndarray, k: int, sc: float, a: float, d_in: np.ndarray) -> None:
        """Blend the hyperdense lesion of slice ``k`` into ``brain`` in place, and keep its extent in
        ``self.truth`` (:class:`neurocache.synth.truth.LesionTruth`; None when it falls off the image).

        The extent is where the lesion's blend weight, divided by the slice's contrast scale, is >= 1/2:
        the lesion's own edge, whatever its contrast; a crescent's only within its angular span (outside
        it the sulcal term leaves a film a pixel or two thick along the whole rim, which is not the lesion).
        Recording it draws no random number and changes no pixel."""
        les = self.lesion
        plan = self.plan
        j, L = k - plan.run_start, plan.run_len
        g, contrast = lesion_scale(j, L, self.lesion_profile)
        base = _F32(les["intensity"])
        if les["kind"] == "subdural":
            inside = _soft(d_in - _F32(1.0))  # keep clear of the inner table
            h = _F32(les["r_px"] * g) * les["taper"] + _F32(0.8) * self.sul_a
            w = _soft(h - d_in) * np.clip(h - _F32(0.3), 0.0, 1.0) * inside * _F32(contrast)
            self.truth = LesionTruth.of(les["kind"], (slice(0, w.shape[0]), slice(0, w.shape[1])),
                                        (w >= _F32(0.5 * contrast)) & (les["taper"] > 0), None, les["r_px"] * g, self.shape)
            _lerp_(brain, base + _F32(3.0) * self.mottle, w)
            return
        r = les["r_px"] * g
        u0, v0 = les["uv"]
        xr_c = u0 * a + les["drift"][0] * (j - L / 2.0)
        yr_c = v0 * self.b * sc + les["drift"][1] * (j - L / 2.0)
        row, col = self._to_image(xr_c, yr_c)
        box = _bbox(row, col, 2.0 * r + 3.0, self.shape)
        if box is None:
            return
        xr = self.xr[box] - _F32(xr_c)
        yr = self.yr[box] - _F32(yr_c)
        qmax = np.full(xr.shape, -10.0, dtype=_F32)
        for ox, oy, sx, sy, ang in les["parts"]:
            ca, sa = np.cos(ang), np.sin(ang)
            dx, dy = xr - _F32(ox * g), yr - _F32(oy * g)
            ex_ = (_F32(ca) * dx + _F32(sa) * dy) / _F32(max(sx * g, 0.6))
            ey_ = (-_F32(sa) * dx + _F32(ca) * dy) / _F32(max(sy * g, 0.6))
            np.maximum(qmax, _F32(1.0) - np.hypot(ex_, ey_), out=qmax)
        qmax += _F32(0.15) * self.sul_a[box]
        w = _soft(qmax * _F32(0.7 * r)) * _soft(d_in[box] - _F32(1.0)) * _F32(contrast)
        self.truth = LesionTruth.of(les["kind"], box, w >= _F32(0.5 * contrast), (float(row), float(col)), r, self.shape)
        _lerp_(brain[box], base + _F32(3.0) * self.mottle[box], w)

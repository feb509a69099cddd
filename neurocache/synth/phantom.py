"""One patient's head phantom, rendered slice by slice in HU (see :mod:`neurocache.synth`)."""

from __future__ import annotations

import numpy as np

from neurocache.synth.fields import _bbox, _lerp_, _smooth_fields, _soft
from neurocache.synth.lesion import _LesionMixin
from neurocache.synth.plan import _PatientPlan
from neurocache.synth.seeds import _F32, HU_MAX, HU_MIN, SLICE_SPACING_MM, _rng
from neurocache.synth.truth import LesionTruth


class _PatientRenderer(_LesionMixin):
    """Precomputes one patient's geometry/noise fields and renders its slices (HU).

    Coordinates: image pixels (row ``y``, col ``x``); ``xr``/``yr`` are pixel offsets from
    the head centre in the head frame (rotated by the head tilt; ``yr`` grows toward the
    back of the head, i.e. down the image).  Normalised head coordinates ``u = xr/a``,
    ``v = yr/b`` where ``a``/``b`` are the outer skull semi-axes (px) of the current slice.
    """

    def __init__(self, plan: _PatientPlan, slices: int, seed: int, lesions: str = "taper") -> None:
        # The draws from ``rng`` happen in this order, so the same seed renders the same patient.
        rng = _rng("patient", seed, plan.index)
        self.plan = plan
        self.lesion_profile = lesions
        self.rng = rng
        R, C = plan.rows, plan.cols
        self.shape = (R, C)
        self.k = float(min(R, C)) / 512.0  # thickness scale relative to a 512-px image
        air = self._draw_materials(rng)
        ex, ey, table_top, table_th, core_th, theta = self._place_head(rng)
        self._shape_skull(rng, theta)
        self._draw_noise_fields(rng)
        self._draw_z_geometry(rng, slices)
        self._draw_distractors(rng)
        # ---- lesion ----
        self.lesion = self._make_lesion(rng) if plan.run_len else None
        self.truth: LesionTruth | None = None  # the lesion's extent on the slice last rendered

        # ---- static background: air, head-rest cradle, table ----
        self.background = self._make_background(rng, air, ex, ey, table_top, table_th, core_th)

    def _draw_materials(self, rng: np.random.Generator) -> float:
        """Scanner noise and tissue values (HU); returns the air value (HU)."""
        self.noise_sigma = float(rng.uniform(4.0, 8.0))  # HU
        air = float(rng.uniform(-1005.0, -990.0))
        self.grey = float(rng.uniform(35.0, 40.0))
        self.white = float(rng.uniform(22.0, 28.0))
        self.csf = float(rng.uniform(3.0, 12.0))
        self.diploe = float(rng.uniform(700.0, 1000.0))
        self.cortical = float(rng.uniform(1500.0, 1900.0))
        self.scalp = float(rng.uniform(10.0, 45.0))
        return air

    def _place_head(self, rng: np.random.Generator) -> tuple[float, float, float, float, float, np.ndarray]:
        """Skull semi-axes, tilt and centre fitted above the table (px), and the per-pixel head-frame
        coordinates; returns (x extent, y extent, table top, table and core thickness (px), ray angle)."""
        R, C = self.shape
        side = float(min(R, C))
        k = self.k
        aspect = float(rng.uniform(0.80, 0.95))
        b = float(rng.uniform(0.32, 0.42)) * side  # AP outer skull semi-axis, px
        a = b * aspect  # LR semi-axis, px
        tilt = float(np.deg2rad(rng.uniform(-15.0, 15.0)))
        scalp_w = max(1.0, float(rng.uniform(3.0, 7.0)) * k)  # px
        margin_top = 0.02 * R
        table_th = max(1.5, float(rng.uniform(3.0, 6.0)) * k)  # dense strip, px
        core_th = max(2.0, float(rng.uniform(8.0, 16.0)) * k)  # low-density core, px
        table_top = R - max(2.0, float(rng.uniform(0.02, 0.05)) * R) - table_th - core_th
        pad_th = float(rng.uniform(0.03, 0.06)) * side  # head-rest below head, px
        cos_t, sin_t = np.cos(tilt), np.sin(tilt)

        def extents(a_: float, b_: float) -> tuple[float, float]:
            ex = np.hypot(a_ * cos_t, b_ * sin_t) + scalp_w
            ey = np.hypot(a_ * sin_t, b_ * cos_t) + scalp_w
            return float(ex), float(ey)

        ex, ey = extents(a, b)
        fit = min(
            1.0,
            (table_top - pad_th - margin_top) / (2.0 * ey),
            (C - 4.0) / (2.0 * ex),
        )
        if fit < 1.0:
            a, b = a * fit * 0.98, b * fit * 0.98
            ex, ey = extents(a, b)
        cy = R / 2.0 + float(rng.uniform(-0.08, 0.08)) * side
        cy = float(np.clip(cy, margin_top + ey, max(margin_top + ey, table_top - pad_th - ey)))
        cx = C / 2.0 + float(rng.uniform(-0.08, 0.08)) * side
        cx = float(np.clip(cx, ex + 2.0, max(ex + 2.0, C - ex - 2.0)))
        self.a, self.b, self.cy, self.cx = a, b, cy, cx
        self.cos_t, self.sin_t = float(cos_t), float(sin_t)
        self.scalp_w = scalp_w

        ys = np.arange(R, dtype=_F32)[:, None] - _F32(cy)
        xs = np.arange(C, dtype=_F32)[None, :] - _F32(cx)
        self.xr = (_F32(cos_t) * xs + _F32(sin_t) * ys).astype(_F32)
        self.yr = (-_F32(sin_t) * xs + _F32(cos_t) * ys).astype(_F32)
        rho0 = np.hypot(self.xr / _F32(a), self.yr / _F32(b))
        radial = np.hypot(self.xr, self.yr)
        # radius of the max-scale outer boundary along each pixel's ray (px)
        self.R0 = np.where(rho0 > 1e-6, radial / np.maximum(rho0, _F32(1e-6)), _F32(a)).astype(_F32)
        self.rho0 = rho0.astype(_F32)
        theta = np.arctan2(self.yr / _F32(b), self.xr / _F32(a)).astype(_F32)
        self.cos_th, self.sin_th = np.cos(theta), np.sin(theta)
        return ex, ey, table_top, table_th, core_th, theta

    def _shape_skull(self, rng: np.random.Generator, theta: np.ndarray) -> None:
        """The outer-boundary modulation and the skull thickness (px) around the ring."""
        k = self.k
        # outer-boundary modulation eps(theta) and skull thickness t(theta) (px)
        eps = np.zeros_like(theta)
        thick = np.ones_like(theta)
        for n in (1, 2, 3, 4):
            ph = float(rng.uniform(0, 2 * np.pi))
            eps += _F32(rng.uniform(0.0, 0.025 / n)) * np.cos(n * theta - _F32(ph))
            ph = float(rng.uniform(0, 2 * np.pi))
            amp = float(rng.uniform(0.08, 0.30)) if n <= 2 else float(rng.uniform(0.0, 0.12))
            thick += _F32(amp) * np.cos(n * theta - _F32(ph))
        t_mean = float(rng.uniform(7.0, 10.0)) * k
        self.eps1 = (1.0 + eps).astype(_F32)
        self.thick = np.clip(thick * _F32(t_mean), max(1.5, 4.0 * k), max(2.0, 13.0 * k)).astype(_F32)

    def _draw_noise_fields(self, rng: np.random.Generator) -> None:
        """Two tissue (low frequency), two sulcal (band-pass) and one mottle field (unit std)."""
        R, C = self.shape
        k = self.k
        # ---- noise fields: 2 tissue (low freq), 2 sulcal (band-pass), 1 mottle ----
        s_tex = max(1.5, 10.0 * k)
        s_sul = max(0.7, 2.2 * k)
        fields = _smooth_fields(
            rng,
            (R, C),
            [(s_tex, 0.0), (s_tex, 0.0), (s_sul, 4.0 * s_sul), (s_sul, 4.0 * s_sul), (max(1.0, 4.0 * k), 0.0)],
        )
        self.tex_a, self.tex_b, self.sul_a, self.sul_b, self.mottle = fields
        self.phase0 = float(rng.uniform(0, 2 * np.pi))
        self.phase_step = float(rng.uniform(0.25, 0.45))  # radians per slice

    def _draw_z_geometry(self, rng: np.random.Generator, slices: int) -> None:
        """Slice positions, brain extent and ventricle shape along z (mm)."""
        k = self.k
        # ---- z geometry (mm) ----
        self.z0 = float(np.round(rng.uniform(-60.0, 10.0) / 0.5) * 0.5)
        z_mid = self.z0 + SLICE_SPACING_MM * (slices - 1) / 2.0
        self.z_center = z_mid + float(rng.uniform(-25.0, 25.0))
        self.z_half = float(rng.uniform(80.0, 100.0))
        self.obliquity = float(rng.uniform(0.3, 0.8))
        self.vent_z = self.z_center + float(rng.uniform(-10.0, 10.0))
        self.vent_half = float(rng.uniform(25.0, 40.0))
        self.vent_scale = float(rng.uniform(0.7, 1.3))  # atrophy / hydrocephalus-ish
        self.vent_cu = float(rng.uniform(0.09, 0.14))
        self.vent_cv = float(rng.uniform(-0.08, 0.02))
        self.vent_ax = (float(rng.uniform(0.06, 0.09)), float(rng.uniform(0.20, 0.28)))
        self.vent_tilt = float(np.deg2rad(rng.uniform(10.0, 28.0)))
        self.rim0 = max(0.7, float(rng.uniform(1.5, 3.5)) * k)
        self.sulcus_thr = float(rng.uniform(0.10, 0.22))

    def _draw_distractors(self, rng: np.random.Generator) -> None:
        """Pineal calcification and hyperdense falx, in some patients of both classes."""
        k = self.k
        # ---- distractors ----
        self.pineal = None
        if rng.random() < 0.4:
            self.pineal = (
                float(rng.uniform(0.10, 0.20)),  # v
                max(0.8, float(rng.uniform(1.0, 2.5)) * k),  # radius px
                float(rng.uniform(120.0, 300.0)),  # HU
                self.vent_z + float(rng.uniform(-5.0, 5.0)),  # z centre mm
                float(rng.uniform(8.0, 15.0)),  # z half extent mm
            )
        self.falx = None
        if rng.random() < 0.5:
            fw = max(0.8, float(rng.uniform(1.0, 2.0)) * k)
            self.falx = (_soft(fw / 2.0 - np.abs(self.xr)) * _F32(0.8), float(rng.uniform(40.0, 52.0)))

    # ---------------------------------------------------------------- setup helpers
    def _make_background(
        self,
        rng: np.random.Generator,
        air: float,
        ex: float,
        ey: float,
        table_top: float,
        table_th: float,
        core_th: float,
    ) -> np.ndarray:
        """Air + foam cradle + curved table, float32 (rows, cols) in HU (no noise)."""
        R, C = self.shape
        side = min(R, C)
        bg = np.full(self.shape, air, dtype=_F32)
        y = np.arange(R, dtype=_F32)[:, None]
        x = np.arange(C, dtype=_F32)[None, :]
        # table: shallow arc, higher at the sides
        curv = float(rng.uniform(0.0, 0.05)) * side
        y_tab = _F32(table_top) - _F32(curv) * ((x - _F32(C / 2.0)) / _F32(C / 2.0)) ** 2
        dy = y - y_tab  # px below table top surface
        w_shell = _soft(dy) * _soft(table_th - dy)
        w_core = _soft(dy - table_th) * _soft(table_th + core_th - dy)
        w_base = _soft(dy - table_th - core_th) * _soft(table_th + core_th + max(1.0, table_th * 0.6) - dy)
        _lerp_(bg, float(rng.uniform(-400.0, -200.0)), w_core)
        dense = float(rng.uniform(200.0, 350.0))
        _lerp_(bg, dense, w_shell)
        _lerp_(bg, dense * 0.8, w_base)
        # foam cradle: box under the head, minus the max-size head (incl. scalp)
        pw = float(rng.uniform(0.55, 0.85)) * ex
        top = self.cy + float(rng.uniform(0.35, 0.6)) * ey
        foam = float(rng.uniform(-160.0, -60.0))
        w_box = (
            _soft(pw - np.abs(x - _F32(self.cx)))
            * _soft(y - _F32(top))
            * _soft(y_tab - y)
        )
        d_head = (self.eps1 - self.rho0) * self.R0 + _F32(self.scalp_w)
        w_pad = w_box * _soft(-d_head)
        _lerp_(bg, foam, w_pad)
        return bg

    # ---------------------------------------------------------------- per slice
    def z_mm(self, k: int) -> float:
        """ImagePositionPatient z of slice ``k`` (mm)."""
        return self.z0 + SLICE_SPACING_MM * k

    def render(self, k: int) -> np.ndarray:
        """HU image (float32, (rows, cols)) of slice ``k``, clipped to [-1024, 3071]."""
        plan = self.plan
        z = self.z_mm(k)
        uz = (z - self.z_center) / self.z_half
        sc = float(np.sqrt(np.clip(1.0 - uz * uz, 0.36, 1.0)))  # head scale, 0.6..1
        a, b = self.a * sc, self.b * sc
        img = self.background.copy()
        self.truth = None  # the lesion's extent on this slice (set by _lesion)

        # signed distance inside the outer skull surface along the ray (px)
        d = (_F32(sc) * self.eps1 - self.rho0) * self.R0
        t = self.thick * _F32(1.0 + self.obliquity * (1.0 - sc))
        d_in = d - t  # distance inside the inner table (px)

        # scalp
        _lerp_(img, self.scalp, _soft(d + _F32(self.scalp_w)))
        # skull: diploe with dense inner/outer tables
        s = np.clip(d / t, 0.0, 1.0)
        q = (_F32(2.0) * s - _F32(1.0)) ** 2
        skull = _F32(self.diploe) + _F32(self.cortical - self.diploe) * (q * q) + _F32(60.0) * self.sul_b
        _lerp_(img, skull, _soft(d))

        # brain tissue: grey/white mixture, white matter more central
        ph = self.phase0 + self.phase_step * k
        tex = _F32(np.cos(ph)) * self.tex_a + _F32(np.sin(ph)) * self.tex_b
        sul = _F32(np.cos(ph)) * self.sul_a + _F32(np.sin(ph)) * self.sul_b
        rho = self.rho0 / _F32(sc)
        wm = np.clip(_F32(0.5) + _F32(0.9) * (tex + _F32(2.6) * (_F32(0.62) - rho)), 0.0, 1.0)
        brain = _F32(self.grey) + _F32(self.white - self.grey) * wm + _F32(1.5) * sul
        # CSF: patchy rim under the skull + sulci in the cortical band
        rim_w = _F32(self.rim0) * np.clip(_F32(1.0) + _F32(0.8) * tex, 0.2, 2.0)
        w_rim = _soft(rim_w - d_in)
        cortex_w = _F32(0.14 * min(a, b))
        w_sul = np.clip(_F32(1.0) - np.abs(sul) / _F32(self.sulcus_thr), 0.0, 1.0)
        w_sul *= np.clip((cortex_w - d_in) / cortex_w * _F32(2.0), 0.0, 1.0) * _F32(0.85)
        _lerp_(brain, self.csf, np.maximum(w_rim, w_sul))
        if self.falx is not None:
            w_falx, falx_hu = self.falx
            _lerp_(brain, falx_hu, w_falx * (np.abs(self.yr) > _F32(0.3 * b)))
        self._ventricles(brain, z, a, b)
        if self.pineal is not None:
            self._pineal(brain, z, b)
        if plan.label(k):
            self._lesion(brain, k, sc, a, d_in)
        _lerp_(img, brain, _soft(d_in))

        # scanner noise: mildly correlated gaussian
        n = self.rng.standard_normal(self.shape, dtype=_F32)
        n += _F32(0.5) * (np.roll(n, 1, axis=0) + np.roll(n, 1, axis=1))
        img += n * _F32(self.noise_sigma / np.sqrt(1.5))
        np.clip(img, HU_MIN, HU_MAX, out=img)
        return img

    def _to_image(self, xr: float, yr: float) -> tuple[float, float]:
        """Head-frame offset (px) -> image (row, col) coordinates."""
        col = self.cx + self.cos_t * xr - self.sin_t * yr
        row = self.cy + self.sin_t * xr + self.cos_t * yr
        return row, col

    def _ventricles(self, brain: np.ndarray, z: float, a: float, b: float) -> None:
        """Blend two butterfly-shaped lateral ventricles (CSF) into ``brain`` in place."""
        uz = (z - self.vent_z) / self.vent_half
        vs = self.vent_scale * float(np.sqrt(max(0.0, 1.0 - uz * uz)))
        if vs < 0.08:
            return
        box = _bbox(self.cy, self.cx, 0.5 * max(a, b) + 2, self.shape)
        if box is None:
            return
        u = self.xr[box] / _F32(a)
        v = self.yr[box] / _F32(b)
        ax_u, ax_v = self.vent_ax[0] * vs, self.vent_ax[1] * min(vs, 1.2)
        w = np.zeros_like(u)
        for side in (-1.0, 1.0):
            # body + frontal horn; anterior (v < 0) ends splay outwards
            for cu, cv, su, sv, tilt in (
                (self.vent_cu, self.vent_cv, ax_u, ax_v, self.vent_tilt),
                (self.vent_cu * 1.25, self.vent_cv - 0.8 * ax_v, ax_u * 1.3, ax_v * 0.45, self.vent_tilt * 1.6),
            ):
                ca, sa = np.cos(side * tilt), np.sin(side * tilt)
                du, dv = u - _F32(side * cu), v - _F32(cv)
                eu = (_F32(ca) * du + _F32(sa) * dv) / _F32(su)
                ev = (-_F32(sa) * du + _F32(ca) * dv) / _F32(sv)
                qd = (_F32(1.0) - np.hypot(eu, ev)) * _F32(su * a)
                np.maximum(w, _soft(qd), out=w)
        _lerp_(brain[box], self.csf, w)

    def _pineal(self, brain: np.ndarray, z: float, b: float) -> None:
        """Blend a small calcified pineal dot (HU > 100) into ``brain`` in place."""
        v, r, hu, zc, zh = self.pineal
        if abs(z - zc) > zh:
            return
        row, col = self._to_image(0.0, v * b)
        box = _bbox(row, col, r + 2, self.shape)
        if box is None:
            return
        yy = np.arange(box[0].start, box[0].stop, dtype=_F32)[:, None] - _F32(row)
        xx = np.arange(box[1].start, box[1].stop, dtype=_F32)[None, :] - _F32(col)
        _lerp_(brain[box], hu, _soft(_F32(r) - np.hypot(yy, xx)))

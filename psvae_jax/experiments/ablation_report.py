"""The ablation's report: its markdown tables and its convergence plot (adherence vs DiT step,
one line per variant), from the per-variant results `psvae_jax.experiments.ablation` collects."""

from __future__ import annotations

import numpy as np

COLORS = {  # plot colours
    "pixel_vae": (230, 80, 60),
    "svae": (70, 140, 230),
    "psvae": (60, 180, 90),
    "psvae_random": (200, 170, 60),
}


def curve_points(curve: dict, key: str) -> list[tuple[int, float]]:
  """[(step, figure)] of one curve, by step (a JSON file's keys come in string order)."""
  return sorted((int(s), float(f[key])) for s, f in curve.items() if key in f)


def plot_curves(curves: dict[str, dict[int, dict]], keys: tuple[str, ...], path: str) -> np.ndarray:
  """Adherence vs DiT step, one panel per key, one line per variant: uint8 image, saved."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top

  pw, ph, m = 420, 300, 48
  img = Image.new("RGB", (pw * len(keys), ph + 60), (255, 255, 255))
  d = ImageDraw.Draw(img)
  curves = {name: {int(s): f for s, f in c.items()} for name, c in curves.items()}
  max_step = max([s for c in curves.values() for s in c] + [1])
  top = max(
      [float(f[k]) for c in curves.values() for f in c.values() for k in keys if k in f] + [0]
  )
  top = min(1.0, max(0.25, np.ceil(top * 4) / 4))  # the y axis: 0 to the next quarter above all
  for k, key in enumerate(keys):
    x0, y0, w, h = k * pw + m, 20, pw - m - 16, ph - 60
    d.rectangle([x0, y0, x0 + w, y0 + h], outline=(0, 0, 0))
    for v in np.linspace(0.0, top, 5):
      y = y0 + h - v / top * h
      d.line([x0 - 4, y, x0, y], fill=(0, 0, 0))
      d.line([x0, y, x0 + w, y], fill=(225, 225, 225))
      d.text((x0 - 40, y - 6), f"{v:.4g}", fill=(0, 0, 0))
    for s in sorted({s for c in curves.values() for s in c}):
      x = x0 + s / max_step * w
      d.line([x, y0 + h, x, y0 + h + 4], fill=(0, 0, 0))
      d.text((x - 12, y0 + h + 6), str(s), fill=(0, 0, 0))
    d.text((x0, y0 + h + 22), f"DiT step  ({key})", fill=(0, 0, 0))
    for name, curve in curves.items():
      pts = [(x0 + s / max_step * w, y0 + h - v / top * h) for s, v in curve_points(curve, key)]
      color = COLORS.get(name, (0, 0, 0))
      if len(pts) > 1:
        d.line(pts, fill=color, width=2)
      for x, y in pts:
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
  for i, name in enumerate(curves):
    x = 16 + i * 150
    d.rectangle([x, ph + 30, x + 12, ph + 42], fill=COLORS.get(name, (0, 0, 0)))
    d.text((x + 18, ph + 30), name, fill=(0, 0, 0))
  out = np.asarray(img, np.uint8)
  from psvae_jax import writers  # pylint: disable=g-import-not-at-top

  writers.save_png(path, out)
  return out


def _fmt(v) -> str:
  if isinstance(v, dict):
    return f"{v['mean']:.3f} ± {v['se']:.3f}"
  return "—" if v is None else f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def markdown_table(
    results: dict[str, dict],
    cols: list[tuple[str, str]] | None = None,
    curve_keys: tuple[str, str] = ("adherence", "adherence_cfg1"),
    curve_name: str = "Adherence",
) -> str:
  """The ablation's table (one row per variant; `cols`: (header, result key), default the
  shapes world's) and its curve table (`curve_keys`: default guidance, guidance 1)."""
  cols = cols or [
      ("PSNR", "psnr"),
      ("SSIM", "ssim"),
      ("recon adh.", "recon_adherence"),
      ("probe shape", "probe_shape"),
      ("probe colour", "probe_colour"),
      ("probe position", "probe_position"),
      ("adh. unseen", "adherence_unseen"),
      ("adh. unseen cfg1", "adherence_unseen_cfg1"),
      ("adh. seen", "adherence_seen"),
      ("adh. seen cfg1", "adherence_seen_cfg1"),
      ("fid_proxy", "fid_proxy"),
      ("rfid_proxy", "rfid_proxy"),
  ]
  lines = [
      "| variant | " + " | ".join(c for c, _ in cols) + " |",
      "|---|" + "---|" * len(cols),
  ]
  for name, r in results.items():
    lines.append(f"| {name} | " + " | ".join(_fmt(r.get(k)) for _, k in cols) + " |")
  curve_lines = ["", f"{curve_name} (default guidance / cfg 1) vs DiT step:", ""]
  steps = sorted({int(s) for r in results.values() for s in r.get("curve", {})})
  curve_lines.append("| variant | " + " | ".join(str(s) for s in steps) + " |")
  curve_lines.append("|---|" + "---|" * len(steps))
  for name, r in results.items():
    c = {int(s): f for s, f in r.get("curve", {}).items()}
    nan = float("nan")
    cells = [
        (
            f"{c[s].get(curve_keys[0], nan):.2f} / {c[s].get(curve_keys[1], nan):.2f}"
            if s in c
            else "—"
        )
        for s in steps
    ]
    curve_lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines + curve_lines) + "\n"

"""The audit page: one self-contained HTML file (inline CSS, images as PNG data URIs, no script,
no external resource), readable offline and shareable as one file, at most 1280 px wide."""
from __future__ import annotations

import base64
import html
import io
from typing import List, Optional

import torch
from torch import Tensor

__all__ = ["render_html", "png_data_uri"]

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#fafafa;color:#222}
main{max-width:1200px;margin:0 auto;padding:16px 24px;box-sizing:border-box}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
.wrap{max-width:100%;overflow-x:auto}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:2px 16px}
.row{display:flex;flex-wrap:wrap;align-items:center;gap:3px;margin:2px 0}
.row span{display:inline-block;width:90px;font-size:.8em}
.row img{image-rendering:pixelated;border:1px solid #ccc;max-width:180px;height:auto}
.flag{color:#b00;font-weight:bold}.note{color:#555;font-size:.85em}
code{background:#eee;padding:0 3px}
"""


def png_data_uri(img: Tensor, lo: float = 0.0, hi: float = 1.0, min_side: int = 48) -> str:
    """A ``(C, H, W)`` or flat image as a PNG data URI: grey or RGB, ``[lo, hi]`` mapped to
    black-white, upscaled (nearest) to at least ``min_side`` px on its short side."""
    from PIL import Image

    t = img.detach().float().cpu()
    if t.dim() == 1:
        s = int(round(t.numel() ** 0.5))
        t = t.reshape(1, s, -1) if s * s == t.numel() else t.reshape(1, 1, -1)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.shape[0] not in (1, 3):
        t = t[:1]
    span = (hi - lo) if hi > lo else 1.0
    a = ((t - lo) / span).clamp(0, 1).mul(255).round().to(torch.uint8)
    arr = a[0].numpy() if a.shape[0] == 1 else a.permute(1, 2, 0).numpy()
    im = Image.fromarray(arr, mode="L" if a.shape[0] == 1 else "RGB")
    k = max(1, -(-min_side // min(im.size)))
    if k > 1:
        im = im.resize((im.size[0] * k, im.size[1] * k), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}"
    return html.escape(str(v))


def _table(rows: List[dict], cols: List[tuple]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k, _ in cols) + "</tr>" for r in rows)
    return f'<div class="wrap"><table><tr>{head}</tr>{body}</table></div>'


def _images(report, section: str, box, label: Optional[str] = None, limit: int = 8) -> str:
    rows = []
    lo, hi = box if box else (None, None)
    for (sec, c), x in report.images.items():
        if sec != section:
            continue
        a, b = (lo, hi) if lo is not None else (float(x.min()), float(x.max()))
        imgs = "".join(f'<img src="{png_data_uri(t, a, b)}" alt="{html.escape(section)} class {c}">'
                       for t in x[:limit])
        rows.append(f'<div class="row"><span>{html.escape(label or "class")} {c}</span>{imgs}</div>')
    return f'<div class="gallery">{"".join(rows)}</div>' if rows else '<p class="note">none verified or section skipped</p>'


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _section(sid: str, title: str, body: str, intro: str = "") -> str:
    return f'<section id="{sid}"><h2>{title}</h2>{_note(intro) if intro else ""}{body}</section>'


def render_html(report) -> str:
    """The page of an :class:`~captum_invert.auditing.AuditReport`."""
    d = report.data
    s, m = d["settings"], d["model"]
    box = tuple(s["input_range"]) if s.get("input_range") else None
    cls = d["classes"]
    flagged = [c["class"] for c in cls if c.get("flag_noise_only")]
    summary = _table(cls, [("class", "class"), ("real_reach", "real inputs reaching p"),
                           ("fooling_verified", "fooling inputs found"),
                           ("fooling_ms_per_sample", "ms per fooling input"),
                           ("fooling_nearest_real_l2", "fooling: L2 to nearest real"),
                           ("prototypes_verified", "data-free prototypes"),
                           ("prototypes_judge_read", "judge reads prototype"),
                           ("prototypes_data_verified", "data-prior prototypes"),
                           ("flag_noise_only", "noise reaches, no real input does")])
    if flagged:
        summary += (f'<p class="flag">Classes that noise reaches but no real input does: '
                    f"{', '.join(map(str, flagged))}</p>")
    f = d.get("fooling") or {}
    ps = f.get("passes") or {}
    fooling = (_note(f"{f.get('seconds')} s in all; Levenberg-Marquardt steps per sample: "
                     f"{_fmt(ps.get('mean_iterations'))}; restarts: {_fmt(ps.get('restarts'))}.") if f else "")
    protos = _images(report, "prototypes", box)
    if any(k == "prototypes_data" for k, _ in report.images):
        protos += _note("With a prior of the real data (<code>DataPrior</code>):")
        protos += _images(report, "prototypes_data", box)
    rd, dist, regs, hd = d.get("real_data"), d.get("distribution"), d.get("regions"), d.get("hardening")
    if dist:
        a, b = dist["classes"]
        dist_body = (f"<p>Classes {a} and {b} (chosen by {html.escape(dist['chosen_by'])}), target "
                     f"{dist['target']}: {'reachable' if dist['reachable'] else 'not reached'}, "
                     f"{dist['verified']} of {dist['requested']} verified in {dist['seconds']} s.</p>"
                     + _images(report, "distribution", box, label="0.5/0.5 with"))
    rows = [{"setting": k, "value": v if not isinstance(v, (list, dict)) else str(v)} for k, v in
            {**{f"model.{k}": v for k, v in m.items()}, **s}.items()]
    skipped = ("<p>Skipped:</p><ul>" + "".join(f"<li>{html.escape(x['section'])}: {html.escape(x['reason'])}</li>"
                                                for x in d["skipped"]) + "</ul>") if d.get("skipped") else ""
    parts = [
        f"<h1>captum-invert audit: {html.escape(str(m.get('spec') or m['class']))}</h1>",
        _note(f"{len(cls)} classes audited of {m['n_classes']}; {d['seconds']} s; every image on this page is "
              f"verified by the model (p &ge; {s['min_prob']} for its class)."),
        _section("summary", "Summary", summary),
        _section("fooling", "Fooling inputs", fooling + _images(report, "fooling", box),
                 "ForwardPassInversion from uniform random starts inside the box, no prior: inputs the model "
                 "accepts with confidence. How cheaply they are found measures its fragility."),
        _section("prototypes", "Prototypes", protos,
                 "Data-free (<code>prior='auto'</code>): what the model draws for a class from the checkpoint "
                 "alone."),
        _section("real-data", "Real data",
                 f"<p>{rd['n']} labelled inputs; accuracy {_fmt(rd['accuracy'])}. Per class, the share of its real "
                 f"inputs the model gives p &ge; {s['min_prob']} is in the summary.</p>" if rd else
                 _note("No data given (<code>--data</code>).")),
        _section("distribution", "Distribution target", dist_body if dist else _note("Skipped.")),
        _section("regions", "Certified regions",
                 _table([{"class": k, **v} for k, v in regs.items()],
                        [("class", "class"), ("radius_l2", "radius (L2)"), ("dim", "dimension"),
                         ("seconds", "seconds"), ("error", "error")]) if regs else
                 _note("Not a piecewise-linear net, or skipped (see below)."),
                 "For piecewise-linear nets: a polytope around one sample per class, every point of which the "
                 "model maps to the class; the radius of its largest inscribed ball (L2, pixel space)."),
        _section("hardening", "Hardening",
                 _table(hd["rounds"], [("round", "round"), ("clean_accuracy", "clean accuracy"),
                                       ("lm_undesirable", "LM undesirable"), ("adam_undesirable", "Adam undesirable"),
                                       ("kept", "kept"), ("seconds", "seconds")]) if hd else
                 _note("Not run (<code>--harden</code>, with data).")),
        _section("settings", "Settings", _table(rows, [("setting", "setting"), ("value", "value")]) + skipped),
    ]
    body = "\n".join(parts)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>captum-invert audit</title><style>{CSS}</style></head><body><main>\n{body}\n</main></body></html>\n")

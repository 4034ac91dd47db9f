"""DIR/report.html: one job's trust report, a single self-contained file.

Built from DIR/metrics.json and, when present, DIR/explanations.json (the
model explained on the held-out set, ``explain.job.write_explanations``) and
DIR/audit.jsonl (checked with ``verify_log(..., trust_first=True)``, its
signer compared with DIR/audit.key.pub). Readable offline: plots are inline base64 PNGs, the
style is inline, there is no script. Every string that comes from the job
(its name, column names, node ids, reasons) goes through ``html.escape``.

Sections, each ``<section id=...>`` with an ``<h2>``, in order: ``summary``,
``curve``, ``participation``, ``contributions``, ``privacy``, ``cost``,
``tree`` (the secure aggregation tree's shape per round), ``explanations``
(permutation importance and integrated gradients per feature, an image
model's saliency map), ``fairness`` (the metric per group, a group under the
job's ``[report] min_count`` rows suppressed), ``model-card``, ``audit``. A
section with nothing to show says why.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tessera.reports.plots import curves_figure

__all__ = ["SECTIONS", "build_report", "write_report"]

SECTIONS = (
    ("summary", "Summary"),
    ("curve", "Metric against the centralized baseline"),
    ("participation", "Participation and dropouts"),
    ("contributions", "Contribution indicators and exclusions"),
    ("privacy", "Privacy budget"),
    ("cost", "Bytes and simulated seconds per round"),
    ("tree", "Execution tree"),
    ("explanations", "Global explanations"),
    ("fairness", "Metrics per group"),
    ("model-card", "Model card"),
    ("audit", "Audit log"),
)

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ccc;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;
text-align:left}th{background:#f3f3f3}img{max-width:100%}.note{color:#666}
.ok{color:#176b17;font-weight:bold}.bad{color:#b00;font-weight:bold}
"""


def write_report(out: Path) -> Path:
    """Write DIR/report.html from DIR/metrics.json (and DIR/explanations.json,
    DIR/audit.jsonl); returns its path."""
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    path = out / "report.html"
    tmp = path.with_name("report.tmp.html")
    tmp.write_text(build_report(metrics, out), encoding="utf-8")
    tmp.replace(path)
    return path


def build_report(metrics: Mapping[str, Any], out: Path | None = None) -> str:
    """The report's HTML for ``metrics`` (metrics.json's content); ``out``: the job's
    folder, where explanations.json, audit.jsonl, audit.key.pub and model.safetensors
    are looked for."""
    explained = _explanations_of(out)
    parts = {
        "summary": _summary(metrics),
        "curve": _curve(metrics),
        "participation": _participation(metrics),
        "contributions": _contributions(metrics),
        "privacy": _privacy(metrics),
        "cost": _cost(metrics),
        "tree": _tree(metrics),
        "explanations": _explanations(metrics, explained),
        "fairness": _fairness(metrics, explained),
        "model-card": _model_card(metrics, explained),
        "audit": _audit(out),
    }
    job = escape(str(metrics.get("job", "job")))
    body = "\n".join(
        f'<section id="{sid}">\n<h2>{title}</h2>\n{parts[sid]}\n</section>'
        for sid, title in SECTIONS
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>Tessera report: {job}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>Tessera report: {job}</h1>\n"
        f'<p class="note">Tessera {escape(str(metrics.get("tessera", "?")))}, '
        f"status {escape(str(metrics.get('status', '?')))}. One file, readable offline.</p>\n"
        f"{body}\n</body>\n</html>\n"
    )


# --- helpers -----------------------------------------------------------------


def _fmt(v: Any, digits: int = 4) -> str:
    """A value for a cell, escaped; None or NaN as an em dash."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "&mdash;"
    if isinstance(v, float):
        return escape(f"{v:.{digits}g}")
    return escape(str(v))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _img(fig: Figure, alt: str) -> str:
    """The figure as an inline PNG (and closed)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=90)
    finally:
        plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _rounds(metrics: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(metrics.get("rounds") or [])


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


# --- sections ------------------------------------------------------------------


def _summary(m: Mapping[str, Any]) -> str:
    final = m.get("final") or {}
    central = m.get("centralized") or {}
    records = m.get("records") or {}
    model = m.get("model") or {}
    fv, cv = _num(final.get("value")), _num(central.get("value"))
    ratio = fv / cv if math.isfinite(fv) and math.isfinite(cv) and cv else math.nan
    rows: list[tuple[str, Any]] = [
        ("job", m.get("job")),
        ("task", m.get("task")),
        ("metric", m.get("metric")),
        ("nodes", m.get("nodes")),
        ("training records (on the nodes)", records.get("train")),
        ("held-out test records", records.get("test")),
        ("rounds", len(_rounds(m))),
        ("aggregation", "secure" if m.get("secure") else "plaintext"),
        ("model", f"{model.get('kind', '?')}, {model.get('parameters', '?')} parameters"),
        (f"final {m.get('metric', 'metric')} (federated)", final.get("value")),
        (f"centralized baseline {m.get('metric', 'metric')}", central.get("value")),
        ("federated / centralized", ratio),
    ]
    if final.get("rmse") is not None:
        rows += [("final RMSE", final.get("rmse")), ("final MAE", final.get("mae"))]
    if central.get("rmse") is not None:
        rows += [("centralized RMSE", central.get("rmse")), ("centralized MAE", central.get("mae"))]
    out = _table(("", "value"), rows)
    if not central:
        out += _note("No centralized baseline was trained (baseline.enabled = false).")
    return out


def _curve(m: Mapping[str, Any]) -> str:
    if not _rounds(m):
        return _note("No round closed: nothing to plot.")
    fig = curves_figure(dict(m))
    return _img(fig, "the federated metric per round against the centralized baseline")


def _participation(m: Mapping[str, Any]) -> str:
    rounds = _rounds(m)
    if not rounds:
        return _note("No round closed.")
    xs = [r["round"] + 1 for r in rounds]
    fig, ax = plt.subplots(figsize=(7, 3))
    part = [int(r.get("participants", 0)) for r in rounds]
    drop = [int(r.get("dropped", 0)) for r in rounds]
    late = [int(r.get("late", 0)) for r in rounds]
    ax.bar(xs, part, color="tab:green", label="contributed")
    ax.bar(xs, drop, bottom=part, color="tab:red", label="dropped")
    ax.bar(
        xs,
        late,
        bottom=[p + d for p, d in zip(part, drop, strict=True)],
        color="tab:orange",
        label="late",
    )
    ax.plot(xs, [r.get("selected", 0) for r in rounds], "k:", marker=".", label="selected")
    stacked = [p + d + la for p, d, la in zip(part, drop, late, strict=True)]
    top = max(*(int(r.get("selected", 0)) for r in rounds), *stacked)
    ax.set_ylim(0, top * 1.3 + 1)  # room for the legend above the bars
    ax.set_xlabel("round")
    ax.set_ylabel("nodes")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small", loc="upper left", ncol=4)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    rows = [
        (
            r["round"] + 1,
            r.get("selected"),
            r.get("participants"),
            r.get("dropped"),
            r.get("late"),
            r.get("stragglers"),
            len(r.get("excluded") or []),
        )
        for r in rounds
    ]
    header = ("round", "selected", "contributed", "dropped", "late", "stragglers", "excluded")
    return _img(fig, "participation and dropouts per round") + _table(header, rows)


def _contributions(m: Mapping[str, Any]) -> str:
    c = m.get("contributions")
    excluded_rounds = [(r["round"] + 1, e) for r in _rounds(m) for e in (r.get("excluded") or [])]
    out = ""
    if not c:
        out += _note(
            "This job computed no contribution indicators ([contributions] is off, or the "
            "job is not secure)."
        )
    else:
        scores: Mapping[str, float] = c.get("scores") or {}
        evidence: Mapping[str, int] = c.get("evidence") or {}
        flagged = set(c.get("flagged") or [])
        excluded: Mapping[str, Any] = c.get("excluded") or {}
        out += _table(
            ("method", "rounds valued", "policy", "contributors scored", "flagged", "excluded"),
            [
                (
                    c.get("method"),
                    c.get("rounds_valued"),
                    c.get("policy"),
                    len(scores),
                    len(flagged),
                    len(excluded),
                )
            ],
        )
        if c.get("judged"):
            out += _note(
                f"Against the simulated truth, the {c['judged']} nodes have precision "
                f"{_fmt(c.get('precision'))} and recall {_fmt(c.get('recall'))}."
            )
        lowest = sorted(scores.items(), key=lambda kv: kv[1])[:20]
        if lowest:
            out += "<h3>Lowest scores (at most 20)</h3>" + _table(
                ("node", "score", "valued groups", "flagged"),
                [(n, s, evidence.get(n), "yes" if n in flagged else "") for n, s in lowest],
            )
        if excluded:
            out += "<h3>Excluded by the policy</h3>" + _table(
                ("node", "after round", "reason"),
                [(n, e.get("after_round"), e.get("reason")) for n, e in excluded.items()],
            )
    if excluded_rounds:
        out += "<h3>Exclusions named in the round records</h3>" + _table(
            ("round", "excluded, and why"), excluded_rounds
        )
    elif c:
        out += _note("No round record names an exclusion.")
    return out


def _privacy(m: Mapping[str, Any]) -> str:
    p = m.get("privacy")
    if not p:
        return _note(
            "This job is not differentially private (no [privacy] section): no privacy "
            "budget was spent or accounted for."
        )
    rounds = _rounds(m)
    out = _table(
        ("mechanism", "epsilon spent", "budget", "delta", "on budget"),
        [
            (
                p.get("mechanism"),
                p.get("epsilon"),
                p.get("budget"),
                p.get("delta"),
                p.get("on_budget"),
            )
        ],
    )
    eps = [(r["round"] + 1, _num(r.get("epsilon"))) for r in rounds]
    if any(math.isfinite(e) for _, e in eps):
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.plot([x for x, _ in eps], [e for _, e in eps], marker=".", label="epsilon spent")
        budget = _num(p.get("budget"))
        if math.isfinite(budget):
            ax.axhline(budget, color="tab:red", ls="--", label="budget")
        ax.set_xlabel("round")
        ax.set_ylabel(f"epsilon (delta {p.get('delta')})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out += _img(fig, "privacy budget spent per round")
        out += _table(("round", "epsilon spent"), eps)
    return out


def _cost(m: Mapping[str, Any]) -> str:
    rounds = _rounds(m)
    if not rounds:
        return _note("No round closed.")
    xs = [r["round"] + 1 for r in rounds]
    up = [_num(r.get("bytes_up_per_contributor")) for r in rounds]
    down = [_num(r.get("bytes_down_per_contributor")) for r in rounds]
    sim = [_num(r.get("simulated_seconds")) for r in rounds]
    fig, (ax_b, ax_s) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    ax_b.plot(xs, [b / 1e3 for b in up], marker=".", label="up, per contributor")
    ax_b.plot(xs, [b / 1e3 for b in down], marker="x", label="down, per selected node")
    ax_b.set_ylabel("kB")
    ax_b.legend(fontsize="small")
    ax_b.grid(alpha=0.3)
    ax_s.bar(xs, [0.0 if math.isnan(s) else s for s in sim], color="tab:purple")
    ax_s.set_ylabel("simulated s")
    ax_s.set_xlabel("round")
    ax_s.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_s.grid(alpha=0.3)
    fig.tight_layout()
    rows = [
        (x, u, d, s, _num(r.get("seconds")))
        for x, u, d, s, r in zip(xs, up, down, sim, rounds, strict=True)
    ]
    header = ("round", "bytes up / contributor", "bytes down / node", "simulated s", "wall s")
    total = _note(
        f"Whole job: {_fmt(m.get('simulated_seconds'))} simulated seconds, "
        f"{_fmt(m.get('seconds_total'))} seconds of wall clock."
    )
    return _img(fig, "bytes and simulated seconds per round") + _table(header, rows) + total


def _tree(m: Mapping[str, Any]) -> str:
    if not m.get("secure"):
        return _note(
            "Plaintext job: no tree. Each update went to the coordinator whole and was "
            "summed there; no aggregation tree was drawn."
        )
    shape: Mapping[str, Any] = m.get("tree") or {}
    params = _table(
        ("aggregators per group (k)", "leaf group size", "depth"),
        [(shape.get("k"), shape.get("group_size"), shape.get("depth"))],
    )
    rounds = [r for r in _rounds(m) if r.get("tree_levels")]
    if not rounds:
        return params + _note(
            "The round records hold no tree shape (a deployment's coordinator does not "
            "record it yet; the simulator does)."
        )
    xs = [r["round"] + 1 for r in rounds]
    depth = max(len(r["tree_levels"]) for r in rounds)
    fig, (ax_g, ax_a) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    bottom = [0] * len(rounds)
    for level in range(depth):
        counts = [_at(r["tree_levels"], level) for r in rounds]
        name = "leaf groups" if level == 0 else f"level {level} groups"
        ax_g.bar(xs, counts, bottom=bottom, label=name)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax_g.set_ylim(0, max(bottom) * 1.35 + 1)  # room for the legend above the bars
    ax_g.set_ylabel("groups")
    ax_g.legend(fontsize="small", loc="upper left", ncol=min(depth, 4))
    ax_g.grid(alpha=0.3)
    ax_a.plot(xs, [r.get("tree_aggregators", 0) for r in rounds], marker=".", label="aggregators")
    ax_a.plot(xs, [r.get("tree_backups", 0) for r in rounds], marker="x", label="backups")
    ax_a.set_ylim(bottom=0)
    ax_a.set_ylabel("nodes")
    ax_a.set_xlabel("round")
    ax_a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_a.legend(fontsize="small")
    ax_a.grid(alpha=0.3)
    fig.tight_layout()
    rows = [
        (
            r["round"] + 1,
            len(r["tree_levels"]),
            " / ".join(str(c) for c in r["tree_levels"]),
            r.get("tree_aggregators"),
            r.get("tree_backups"),
            _sizes(r.get("tree_leaf_sizes") or []),
        )
        for r in rounds
    ]
    header = (
        "round",
        "levels",
        "groups per level, leaves first",
        "aggregators",
        "backups",
        "leaf group sizes (size x groups)",
    )
    return (
        params
        + _img(fig, "the execution tree's groups per level and its aggregators per round")
        + _table(header, rows)
        + _note(
            "Aggregators and backups count distinct nodes holding a seat. Each leaf group's "
            "members send one share of their update to each of its k aggregators; each "
            "upper group sums its children's partial sums; the root's k sums make the total."
        )
    )


def _at(values: Sequence[Any], i: int) -> int:
    return int(values[i]) if i < len(values) else 0


def _sizes(pairs: Sequence[int]) -> str:
    """``tree_leaf_sizes`` (size, groups, size, groups, ...) as ``15 x 3, 16 x 25``."""
    return ", ".join(f"{pairs[i]} x {pairs[i + 1]}" for i in range(0, len(pairs) - 1, 2))


def _explanations_of(out: Path | None) -> Mapping[str, Any] | None:
    path = None if out is None else out / "explanations.json"
    if path is None or not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {"error": f"explanations.json is unreadable: {exc}"}
    return loaded if isinstance(loaded, dict) else {"error": "explanations.json is not an object"}


def _no_explanations(e: Mapping[str, Any] | None) -> str | None:
    if e is None:
        return (
            "No explanations.json beside metrics.json: the job ran with [report] explain = "
            "false, or before explanations existed. `tessera report DIR --config job.toml` "
            "computes them from DIR/model.safetensors."
        )
    if e.get("error"):
        return f"No explanations: {e['error']}"
    return None


def _stale(m: Mapping[str, Any], e: Mapping[str, Any]) -> str:
    model = (m.get("model") or {}).get("digest")
    if e.get("model") and model and e["model"] != model:
        return (
            '<p><span class="bad">Stale:</span> explanations.json explains model '
            f"<code>{escape(str(e['model']))}</code>, not this job's final model "
            f"<code>{escape(str(model))}</code>.</p>"
        )
    return ""


_TOP = 20  # features shown in a plot or table


def _bars(
    names: Sequence[str], values: Sequence[float], errors: Sequence[float] | None, xlabel: str
) -> Figure:
    names, values = list(names)[:_TOP][::-1], [_num(v) for v in values][:_TOP][::-1]
    err = None if errors is None else [_num(v) for v in errors][:_TOP][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.32 * len(names)))
    ax.barh(
        range(len(names)),
        [0.0 if math.isnan(v) else v for v in values],
        xerr=None if err is None else [0.0 if math.isnan(v) else v for v in err],
        color="tab:blue",
    )
    ax.set_yticks(range(len(names)), names)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def _explanations(m: Mapping[str, Any], e: Mapping[str, Any] | None) -> str:
    missing = _no_explanations(e)
    if missing is not None or e is None:
        return _note(missing or "")
    skipped: Mapping[str, str] = e.get("skipped") or {}
    out = _stale(m, e) + _note(
        f"On {e.get('rows')} of the {e.get('test_rows')} held-out rows (the AI provider's "
        f"test set, drawn with seed {e.get('seed')}), after the last round; "
        f"{_plain(e.get('seconds'))} seconds to compute."
    )
    imp = e.get("importance")
    out += "<h3>Permutation importance</h3>"
    if imp:
        feats = imp.get("features") or []
        metric = str(imp.get("metric", "metric"))
        out += _img(
            _bars(
                [str(f["feature"]) for f in feats],
                [f.get("mean") for f in feats],
                [f.get("std") for f in feats],
                f"drop in {metric} when shuffled",
            ),
            f"permutation importance: drop in {metric} per feature",
        )
        out += _table(
            ("feature", f"mean drop in {metric}", "std"),
            [(f["feature"], f.get("mean"), f.get("std")) for f in feats[:_TOP]],
        )
        out += _note(
            f"Unshuffled {metric}: {_plain(imp.get('baseline'))}; {e.get('repeats')} "
            "permutations per feature. It says how much the model relies on a feature on "
            "these rows, not that the feature causes the target; correlated features share "
            "(and can hide) each other's importance."
            + (f" The {_TOP} largest of {len(feats)} are shown." if len(feats) > _TOP else "")
        )
    else:
        out += _note(f"Not computed: {skipped.get('importance', 'no reason given')}.")
    attr = e.get("attributions")
    out += "<h3>Integrated gradients</h3>"
    if attr:
        feats = attr.get("features") or []
        out += _img(
            _bars(
                [str(f["feature"]) for f in feats],
                [f.get("mean_abs") for f in feats],
                None,
                "mean |attribution|",
            ),
            "integrated-gradient attributions: mean absolute attribution per feature",
        )
        out += _table(
            ("feature", "mean |attribution|", "mean attribution"),
            [(f["feature"], f.get("mean_abs"), f.get("mean")) for f in feats[:_TOP]],
        )
        out += _note(
            f"Of {attr.get('output', 'the output')}, from a baseline of every standardised "
            f"feature at its training mean and no category, {e.get('steps')} steps "
            f"(integration gap {_plain(attr.get('gap'))}). It says how the output moves "
            "between the baseline and a row, not what the model does far from that path."
        )
    else:
        out += _note(f"Not computed: {skipped.get('attributions', 'no reason given')}.")
    sal = e.get("saliency")
    out += "<h3>Saliency</h3>"
    if sal and sal.get("values"):
        fig, ax = plt.subplots(figsize=(3.6, 3.2))
        shown = ax.imshow([[_num(v) for v in row] for row in sal["values"]], cmap="viridis")
        fig.colorbar(shown, ax=ax, label="mean |d logit / d pixel|")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.tight_layout()
        out += _img(fig, "saliency map: mean absolute gradient per pixel") + _note(
            "Where a small change of the image would move the prediction most, averaged "
            "over the rows; not what the model \u201csees\u201d."
        )
    else:
        out += _note(f"No saliency map: {skipped.get('saliency', 'not an image model')}.")
    return out


def _fairness(m: Mapping[str, Any], e: Mapping[str, Any] | None) -> str:
    missing = _no_explanations(e)
    if missing is not None or e is None:
        return _note(missing or "")
    entries = list(e.get("fairness") or [])
    skipped = {
        k.removeprefix("fairness:"): v
        for k, v in (e.get("skipped") or {}).items()
        if k.startswith("fairness")
    }
    if not entries and not skipped:
        return _note(
            "The job names no group columns ([report] groups = [...]): no metrics per group."
        )
    out = _stale(m, e)
    for entry in entries:
        column = str(entry.get("column"))
        metric = str(entry.get("metric", "metric"))
        floor = entry.get("min_count")
        groups = list(entry.get("groups") or [])
        shown = [g for g in groups if not g.get("suppressed")]
        out += f"<h3>By {escape(column)}</h3>"
        if shown:
            fig, ax = plt.subplots(figsize=(7, 0.9 + 0.4 * len(shown)))
            ys = range(len(shown))
            ax.barh(ys, [_num(g.get("metric")) for g in shown], color="tab:cyan")
            ax.set_yticks(ys, [f"{g['group']} (n={g['count']})" for g in shown])
            ax.invert_yaxis()
            ax.set_xlabel(f"{metric} on the held-out rows")
            ax.grid(alpha=0.3, axis="x")
            fig.tight_layout()
            out += _img(fig, f"{metric} per {column} group")
        rows = [
            (
                g.get("group"),
                g.get("count"),
                *(
                    (f"suppressed: fewer than {floor} rows", None, None)
                    if g.get("suppressed")
                    else (g.get("metric"), g.get("mean_prediction"), g.get("mean_label"))
                ),
            )
            for g in groups
        ]
        out += _table((column, "rows", metric, "mean prediction", "mean label"), rows)
        out += _note(
            f"Best {entry.get('best')}, worst {entry.get('worst')}: a gap of "
            f"{_plain(entry.get('gap'))} in {metric}, and {_plain(entry.get('prediction_gap'))} "
            f"in the mean prediction, over groups of at least {floor} rows (smaller groups "
            "are counted, their metrics not shown). A gap may come from the data, its labels "
            "or how few rows a group has; it does not say why."
        )
    for column, why in skipped.items():
        out += f"<h3>By {escape(column)}</h3>" + _note(f"Not computed: {why}")
    return out


def _analysis_note(e: Mapping[str, Any] | None) -> str:
    if e is None or e.get("error"):
        return "No explanation or fairness analysis is included in this report."
    columns = [str(f.get("column")) for f in e.get("fairness") or []]
    return "Explanations are global, on held-out rows, and describe this model, not the world" + (
        f"; metrics per group cover {', '.join(columns)} only, not other groups or intersections."
        if columns
        else "; no metrics per group were asked for."
    )


def _model_card(m: Mapping[str, Any], explained: Mapping[str, Any] | None = None) -> str:
    cfg: Mapping[str, Any] = m.get("config") or {}
    data: Mapping[str, Any] = cfg.get("data") or {}
    job: Mapping[str, Any] = cfg.get("job") or {}
    partition: Mapping[str, Any] = cfg.get("partition") or {}
    holdout: Mapping[str, Any] = data.get("holdout") or {}
    features = list(m.get("features") or [])
    shown = ", ".join(features[:30]) + (
        f" and {len(features) - 30} more" if len(features) > 30 else ""
    )
    final = m.get("final") or {}
    central = m.get("centralized") or {}
    metric = m.get("metric", "metric")
    lines = [
        (
            "Intended use",
            f"The job \u201c{m.get('job')}\u201d: a {m.get('task')} model of "
            f"\u201c{data.get('target')}\u201d, trained federated across {m.get('nodes')} nodes. "
            "A research and evaluation artefact; not validated for decisions about people.",
        ),
        (
            "Data",
            f"Source {data.get('source')}, dataset \u201c{data.get('dataset')}\u201d, target "
            f"\u201c{data.get('target')}\u201d; {len(features)} features ({shown}). Partitioned "
            f"by {partition.get('scheme', '?')} over {m.get('nodes')} nodes.",
        ),
        (
            "Metrics",
            f"{metric} on a held-out test set ({_held_out(holdout)}): federated "
            f"{_plain(final.get('value'))}, centralized baseline {_plain(central.get('value'))}.",
        ),
        (
            "Limitations",
            f"One run with one seed ({job.get('seed', '?')}): no spread over seeds is given. "
            "The metric is measured on one held-out split of the same source, not on data from "
            "elsewhere or later. " + _analysis_note(explained),
        ),
        (
            "Secure aggregation",
            "Secure aggregation ("
            + ("used" if m.get("secure") else "not used in this run")
            + ") hides each node's update from the coordinator and from other nodes: only the "
            "round's total is revealed (with [contributions], also sums over groups of at "
            "least secure.min_group contributors). It does not hide what the final model, or "
            "a sum, says about the data, and it does not stop a node from sending a bad "
            "update (the contribution indicators look for those).",
        ),
        (
            "Differential privacy",
            (
                f"Differential privacy bounds what the released sums reveal about any one record: "
                f"epsilon {_plain((m.get('privacy') or {}).get('epsilon'))} at delta "
                f"{_plain((m.get('privacy') or {}).get('delta'))}. It does not protect group-level "
                "facts, and it costs accuracy."
                if m.get("privacy")
                else "Not used: the model and its updates carry no formal privacy guarantee."
            ),
        ),
    ]
    return (
        "<dl>"
        + "".join(f"<dt><strong>{escape(k)}</strong></dt><dd>{escape(v)}</dd>" for k, v in lines)
        + "</dl>"
    )


def _held_out(holdout: Mapping[str, Any]) -> str:
    if holdout.get("by"):
        return f"held out by {holdout['by']}"
    return f"{_plain(holdout.get('fraction'))} of the rows"


def _plain(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _audit(out: Path | None) -> str:
    log = None if out is None else out / "audit.jsonl"
    if log is None or not log.is_file():
        return _note("No audit log (audit.jsonl) was found beside metrics.json.")
    from tessera.audit import BrokenLog, verify_log

    lines = [ln for ln in log.read_bytes().split(b"\n") if ln]
    kinds: Counter[str] = Counter()
    signers: set[str] = set()
    for ln in lines:
        try:
            rec = json.loads(ln)
        except ValueError:
            kinds["(unreadable)"] += 1
            continue
        if isinstance(rec, dict):
            kinds[str(rec.get("kind", "?"))] += 1
            signers.add(str(rec.get("signer", "?")))
    pub = out / "audit.key.pub" if out is not None else None
    run_key = pub.read_text(encoding="ascii").strip().lower() if pub and pub.is_file() else None
    html = _table(("record kind", "count"), sorted(kinds.items()))
    try:
        verified = verify_log(log, trust_first=True)
    except BrokenLog as exc:
        html = (
            f'<p><span class="bad">Broken:</span> {escape(str(exc))}</p>'
            f"<p>{len(lines)} records.</p>" + html
        )
        return html + _signer_note(next(iter(signers)) if len(signers) == 1 else None, run_key)
    except (OSError, ValueError) as exc:
        return f'<p><span class="bad">Could not check:</span> {escape(str(exc))}</p>' + html
    head = (
        f'<p><span class="ok">Verified</span> with <code>verify_log(trust_first=True)</code>: '
        f"{verified.records} records, chain and signatures hold; job "
        f"\u201c{escape(verified.job)}\u201d, {verified.rounds} rounds, "
        f"{escape(verified.status)}; the final model hash matches model.safetensors "
        f"(<code>{escape(verified.model)}</code>).</p>"
    )
    return head + _signer_note(verified.signer, run_key) + html


def _signer_note(signer: str | None, run_key: str | None) -> str:
    if signer is None:
        return _note("The records do not all name one signer.")
    who = f"<p>Signed by Ed25519 key <code>{escape(signer)}</code>: "
    if run_key == signer:
        return (
            who + "the run's own key (audit.key.pub). It was trusted as the first "
            "record's signer; check it against a key you hold with "
            "<code>tessera audit verify --key</code>.</p>"
        )
    if run_key is not None:
        return (
            who + '<span class="bad">not</span> the key in audit.key.pub '
            f"(<code>{escape(run_key)}</code>).</p>"
        )
    return (
        who + "trusted as the first record's signer (no audit.key.pub beside the log); "
        "check it against the coordinator's key with <code>tessera audit verify --key</code>.</p>"
    )

"""The per-student feedback file (FEEDBACK.md) from an engine report."""
from __future__ import annotations


def _fmt_err(o):
    if o.get("problem"):
        return o["problem"]
    if o.get("exact"):
        return f"differs at index {o['where']}: got {o['got']}, expected {o['want']} (must be exact)"
    kind = "absolute" if o.get("absolute") else "relative"
    return (f"max {kind} error {o['err']:.3g} > tolerance {o['tol']:g} at index {tuple(o['where'])}: "
            f"got {o['got']:.9g}, expected {o['want']:.9g}")


def feedback_markdown(report: dict) -> str:
    sc = report["scores"]
    lines = [f"# Feedback for {report['student']}", "",
             f"Total: **{sc['total']:g} / {sc['max_total']:g}** points "
             f"(seed of the random cases: {report['seed']}; graded in {report['seconds']:g} s).", "",
             "| concept | float32 | float64 | max per dtype |", "|---|---|---|---|"]
    for c, v in sc["concepts"].items():
        lines.append(f"| {c} | {v['float32']:g} | {v['float64']:g} | {v['max']:g} |")
    lines.append(f"| **total** | {sum(v['float32'] for v in sc['concepts'].values()):g} | "
                 f"{sum(v['float64'] for v in sc['concepts'].values()):g} | "
                 f"{sum(v['max'] for v in sc['concepts'].values()):g} |")
    lines += ["", "Status per function: `pass`, `fail` (partial credit per output), `missing` (not in your file), "
              "`not implemented` (raises NotImplementedError), `not your code` (minig3n's own code or the golden "
              "files were used), `error`.", ""]
    concept = None
    absent = {}                     # module -> [results] for modules the folder does not have at all
    for res in report["results"]:
        if res["status"] == "missing" and str(res.get("detail", "")).startswith("no "):
            absent.setdefault(res["module"], []).append(res)
    shown = set()
    for res in report["results"]:
        if res["concept"] != concept:
            concept = res["concept"]
            lines += ["", f"## {concept}", ""]
        if res["module"] in absent:
            if res["module"] not in shown:
                shown.add(res["module"])
                rs = absent[res["module"]]
                names = ", ".join(dict.fromkeys(r["function"] for r in rs if r["concept"] == concept))
                pts = sum(r["points"] * (2 if r["dtype"] == "any" else 1) for r in rs)
                lines.append(f"- `{res['module']}.py`: **missing** (no such file in your folder), 0 / {pts:g}: {names}")
            continue
        head = f"- `{res['module']}.{res['function']}` [{res['check']}, {res['dtype']}]: **{res['status']}**"
        if res["status"] in ("pass", "fail"):
            head += f", {res['points'] * res['fraction']:g} / {res['points']:g}"
        else:
            head += f", 0 / {res['points']:g}"
        if res.get("detail"):
            head += f": {res['detail']}"
        lines.append(head)
        hints = []
        for o in res["outputs"]:
            if o.get("ok"):
                continue
            lines.append(f"  - {o['case']}, output `{o['output']}`: {_fmt_err(o)}")
            if o.get("hint") and o["hint"] not in hints:
                hints.append(o["hint"])
        for h in hints:
            lines.append(f"  - **hint:** {h}")
    return "\n".join(lines) + "\n"

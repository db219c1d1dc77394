"""Show a netcheck result: rich tables for the terminal, JSON, and an SVG/HTML picture.

The SVG and HTML are written here by hand (no browser, no template engine), so a
report is one self-contained file to attach to a ticket.
"""
from __future__ import annotations

import html
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import InputError
from .classify import ALL_CLASSES, classify
from .model import ERROR, INFO, WARNING, NetcheckResult

# class name -> (rich style, SVG fill, SVG text colour)
CLASS_COLOURS: dict[str, tuple[str, str, str]] = {
    "below 1GbE": ("bold white on red3", "#c62828", "#ffffff"),
    "1GbE": ("black on dark_orange", "#ef6c00", "#000000"),
    "10GbE": ("black on yellow3", "#d4c21a", "#000000"),
    "25/100GbE": ("black on green3", "#43a047", "#000000"),
    "IB below EDR": ("black on yellow3", "#d4c21a", "#000000"),
    "IB EDR": ("black on green3", "#43a047", "#000000"),
    "IB HDR": ("black on spring_green2", "#00c853", "#000000"),
    "IB NDR": ("black on spring_green1", "#00e676", "#000000"),
    "NVLink": ("black on cyan2", "#00e5ff", "#000000"),
}
MISSING = ("dim", "#e0e0e0", "#616161")
SEVERITY_STYLE = {ERROR: "bold red", WARNING: "yellow", INFO: "cyan"}
SEVERITY_FILL = {ERROR: "#c62828", WARNING: "#f9a825", INFO: "#0277bd"}


def _gbps_text(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _matrix(result: NetcheckResult):
    names = [n.name for n in result.nodes]
    cell = {(ln.src, ln.dst): ln for ln in result.links}
    return names, cell


def to_json(result: NetcheckResult) -> str:
    """The --json text: what render.print_json writes (with schema_version)."""
    import io
    from ..render import print_json
    buf = io.StringIO()
    print_json(result.to_json(), file=buf)
    return buf.getvalue()


# -- terminal ---------------------------------------------------------------------
def _mode(result: NetcheckResult) -> str:
    """How the bandwidth was measured, in words."""
    how = "both directions at once" if result.bidir else "one direction at a time"
    return f"{result.streams} stream{'s' if result.streams != 1 else ''}, {how}"


def _has_single(result: NetcheckResult) -> bool:
    return any((ln.streams or 1) > 1 and ln.single_stream_gbps is not None
               for ln in result.links)


def bandwidth_table(result: NetcheckResult, *, single: bool = False) -> Table:
    """The Gbit/s matrix, coloured by class: the multi-stream figure, or with
    `single` the one-stream figure."""
    names, cell = _matrix(result)
    short = (f", {result.streams} stream{'s' if result.streams != 1 else ''}, "
             f"{'bidir' if result.bidir else 'one way'}") if result.phases else ""
    title = "Gbit/s, row → column, 1 stream" if single else f"Gbit/s, row → column{short}"
    table = Table(title=title, show_lines=False, title_justify="left")
    table.add_column("src \\ dst", style="bold")
    for n in names:
        table.add_column(n, justify="center")
    for a in names:
        row = []
        for b in names:
            if a == b:
                row.append(Text("·", style="dim"))
                continue
            ln = cell.get((a, b))
            gbps = (ln.single_stream_gbps if single else ln.gbps) if ln else None
            cls = classify(gbps)
            style = CLASS_COLOURS.get(cls.name, MISSING)[0] if cls else MISSING[0]
            row.append(Text(f" {_gbps_text(gbps)} ", style=style))
        table.add_row(a, *row)
    return table


def latency_table(result: NetcheckResult) -> Table:
    names, cell = _matrix(result)
    table = Table(title="RTT ms, jumbo ✓/✗", title_justify="left")
    table.add_column("src \\ dst", style="bold")
    for n in names:
        table.add_column(n, justify="center")
    for a in names:
        row = []
        for b in names:
            ln = cell.get((a, b))
            if a == b or ln is None:
                row.append(Text("·", style="dim"))
                continue
            if ln.ping_ok is False:
                row.append(Text("no ping", style="bold red"))
                continue
            rtt = "-" if ln.rtt_ms is None else f"{ln.rtt_ms:.2f}"
            mark = {True: ("✓", "green"), False: ("✗", "bold red"), None: ("", "")}[ln.jumbo_ok]
            t = Text(rtt + " ")
            t.append(mark[0], style=mark[1])
            row.append(t)
        table.add_row(a, *row)
    return table


def nodes_table(result: NetcheckResult) -> Table:
    table = Table(title="Nodes", title_justify="left")
    for col in ("node", "cluster ip", "nic", "mtu", "python", "ray", "vllm", "torch", "kernel"):
        table.add_column(col)
    for n in result.nodes:
        if not n.reachable:
            table.add_row(n.name, Text("unreachable", style="bold red"), "", "", "", "", "", "",
                          "")
            continue
        v = n.versions
        table.add_row(n.name + (" (head)" if n.is_head else ""), n.cluster_ip or "-",
                      n.interface or "-", str(n.mtu or "-"),
                      *(v.get(k) or "-" for k in ("python", "ray", "vllm", "torch", "kernel")))
    return table


def findings_table(result: NetcheckResult) -> Table:
    table = Table(title="Findings", title_justify="left", show_lines=True)
    table.add_column("severity")
    table.add_column("code")
    table.add_column("hosts")
    table.add_column("message", ratio=3)
    table.add_column("fix", ratio=3)
    for f in result.findings:
        table.add_row(Text(f.severity, style=SEVERITY_STYLE.get(f.severity, "")), f.code,
                      ", ".join(f.hosts), f.message, f.fix)
    return table


def findings_text(result: NetcheckResult) -> Text:
    """Findings as blocks (readable at any width): severity code [hosts], message, fix."""
    out = Text()
    for f in result.findings:
        out.append(f"{f.severity.upper():<7} ", style=SEVERITY_STYLE.get(f.severity, ""))
        out.append(f.code, style="bold")
        out.append(f"  [{', '.join(f.hosts)}]\n", style="bold")
        out.append(f"        {f.message}\n")
        out.append("        fix: ", style="green")
        out.append(f"{f.fix}\n\n")
    return out


def render(result: NetcheckResult, console: Console) -> None:
    console.print(nodes_table(result))
    if result.links:
        console.print(bandwidth_table(result))
        if _has_single(result):
            console.print(bandwidth_table(result, single=True))
        console.print(latency_table(result))
    if result.collective is not None:
        from .collective import render_collective
        render_collective(result.collective, console)
    if result.findings:
        console.print(Text("Findings", style="italic"))
        console.print(findings_text(result))
    errors = sum(f.severity == ERROR for f in result.findings)
    warnings = sum(f.severity == WARNING for f in result.findings)
    verdict = Text()
    if errors:
        verdict.append(f"NOT FIT: {errors} error(s)", style="bold red")
    else:
        verdict.append("network fit for distributed inference", style="bold green")
    if warnings:
        verdict.append(f", {warnings} warning(s)", style="yellow")
    if result.timings.get("total"):
        bw = (f", {result.rounds} bandwidth rounds in {result.phases} phases "
              f"({_mode(result)})" if result.phases else f", {result.rounds} bandwidth rounds")
        verdict.append(f"  ({result.timings['total']:.1f}s, {result.schedule} schedule{bw})",
                       style="dim")
    console.print(verdict)


# -- SVG / HTML ---------------------------------------------------------------------
def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return lines or [""]


def to_svg(result: NetcheckResult) -> str:
    """A self-contained SVG: the bandwidth heatmap, a legend, and the findings."""
    names, cell = _matrix(result)
    n = len(names)
    cw, ch, left, top = 86, 40, 150, 92
    grid_w = left + cw * max(n, 1)
    width = max(grid_w + 40, 980)
    parts: list[str] = []
    y = top
    parts.append('<text x="20" y="32" class="title">clusterctl netcheck</text>')
    mode = f" ({_mode(result)})" if result.phases else ""
    parts.append(f'<text x="20" y="54" class="sub">bandwidth Gbit/s, row sends to column; '
                 f'{_esc(result.schedule)} schedule, {result.rounds} rounds{_esc(mode)}'
                 f'</text>')
    for j, b in enumerate(names):
        x = left + j * cw + cw / 2
        parts.append(f'<text x="{x}" y="{y - 8}" class="head" text-anchor="middle">'
                     f'{_esc(b)}</text>')
    for i, a in enumerate(names):
        ry = y + i * ch
        parts.append(f'<text x="{left - 10}" y="{ry + ch / 2 + 5}" class="head" '
                     f'text-anchor="end">{_esc(a)}</text>')
        for j, b in enumerate(names):
            x = left + j * cw
            if a == b:
                fill, fg, label, tip = "#fafafa", "#9e9e9e", "·", a
            else:
                ln = cell.get((a, b))
                gbps = ln.gbps if ln else None
                cls = classify(gbps)
                _, fill, fg = CLASS_COLOURS.get(cls.name, MISSING) if cls else MISSING
                label = _gbps_text(gbps)
                tip = f"{a} -> {b}: {label} Gbit/s" + (f" ({cls.name})" if cls else "")
                if ln and (ln.streams or 1) > 1 and ln.single_stream_gbps is not None:
                    tip += f", 1 stream {_gbps_text(ln.single_stream_gbps)} Gbit/s"
                if ln and ln.rtt_ms is not None:
                    tip += f", rtt {ln.rtt_ms:.2f} ms"
                if ln and ln.jumbo_ok is False:
                    tip += ", jumbo frames dropped"
                    label += " ✗"
            parts.append(f'<g><title>{_esc(tip)}</title><rect x="{x + 1}" y="{ry + 1}" '
                         f'width="{cw - 2}" height="{ch - 2}" rx="4" fill="{fill}"/>'
                         f'<text x="{x + cw / 2}" y="{ry + ch / 2 + 5}" fill="{fg}" '
                         f'class="cell" text-anchor="middle">{_esc(label)}</text></g>')
    y += n * ch + 30
    # legend
    lx = 20
    for cls in ALL_CLASSES:
        if cls.name.startswith("IB below"):
            continue
        _, fill, _ = CLASS_COLOURS[cls.name]
        parts.append(f'<rect x="{lx}" y="{y}" width="14" height="14" rx="2" fill="{fill}"/>'
                     f'<text x="{lx + 19}" y="{y + 12}" class="legend">{_esc(cls.name)}</text>')
        lx += 30 + 8 * len(cls.name)
    y += 40
    # findings
    errors = sum(f.severity == ERROR for f in result.findings)
    verdict = (f"NOT FIT: {errors} error(s)" if errors
               else "fit for distributed inference")
    colour = "#c62828" if errors else "#2e7d32"
    parts.append(f'<text x="20" y="{y}" class="verdict" fill="{colour}">{_esc(verdict)}</text>')
    y += 24
    text_width = max(60, int((width - 60) / 7.2))
    for f in result.findings:
        fill = SEVERITY_FILL.get(f.severity, "#616161")
        head = f"{f.severity.upper()} {f.code} [{', '.join(f.hosts)}]"
        parts.append(f'<rect x="20" y="{y - 13}" width="6" height="16" fill="{fill}"/>'
                     f'<text x="32" y="{y}" class="fhead">{_esc(head)}</text>')
        y += 18
        for line in _wrap(f.message, text_width):
            parts.append(f'<text x="32" y="{y}" class="ftext">{_esc(line)}</text>')
            y += 16
        for k, line in enumerate(_wrap("fix: " + f.fix, text_width)):
            parts.append(f'<text x="32" y="{y}" class="ffix">{_esc(line)}</text>')
            y += 16
        y += 8
    height = y + 10
    style = ("<style>text{font-family:DejaVu Sans Mono,Menlo,Consolas,monospace}"
             ".title{font-size:20px;font-weight:bold}.sub{font-size:12px;fill:#555}"
             ".head{font-size:13px;font-weight:bold}.cell{font-size:13px}"
             ".legend{font-size:12px}.verdict{font-size:15px;font-weight:bold}"
             ".fhead{font-size:13px;font-weight:bold}.ftext{font-size:12px}"
             ".ffix{font-size:12px;fill:#1b5e20}</style>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">{style}'
            f'<rect width="100%" height="100%" fill="#ffffff"/>' + "".join(parts) + "</svg>\n")


def to_html(result: NetcheckResult) -> str:
    rows = []
    for f in result.findings:
        rows.append(f'<tr class="{_esc(f.severity)}"><td>{_esc(f.severity)}</td>'
                    f'<td>{_esc(f.code)}</td><td>{_esc(", ".join(f.hosts))}</td>'
                    f'<td>{_esc(f.message)}</td><td>{_esc(f.fix)}</td></tr>')
    nodes = []
    for n in result.nodes:
        v = n.versions
        nodes.append("<tr>" + "".join(f"<td>{_esc(x)}</td>" for x in (
            n.name + (" (head)" if n.is_head else ""),
            n.cluster_ip or ("unreachable" if not n.reachable else "-"),
            n.interface or "-", n.mtu or "-", v.get("python") or "-", v.get("ray") or "-",
            v.get("vllm") or "-", v.get("torch") or "-", v.get("kernel") or "-")) + "</tr>")
    css = ("body{font-family:system-ui,sans-serif;margin:2em;color:#212121}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
           "padding:4px 8px;text-align:left;vertical-align:top}"
           "tr.error td:first-child{background:#c62828;color:#fff}"
           "tr.warning td:first-child{background:#f9a825}"
           "tr.info td:first-child{background:#0277bd;color:#fff}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>clusterctl netcheck</title><style>{css}</style></head><body>"
            "<h1>clusterctl netcheck</h1>" + to_svg(result) +
            "<h2>Nodes</h2><table><tr><th>node</th><th>cluster ip</th><th>nic</th>"
            "<th>mtu</th><th>python</th><th>ray</th><th>vllm</th><th>torch</th>"
            "<th>kernel</th></tr>" + "".join(nodes) + "</table>"
            "<h2>Findings</h2><table><tr><th>severity</th><th>code</th><th>hosts</th>"
            "<th>message</th><th>fix</th></tr>" + "".join(rows) + "</table>"
            "</body></html>\n")


def write_report(result: NetcheckResult, path: str | Path) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".svg":
        text = to_svg(result)
    elif suffix in (".html", ".htm"):
        text = to_html(result)
    else:
        raise InputError(f"--report {path}: give a file ending in .svg or .html", key="--report")
    path.write_text(text, encoding="utf-8")
    return path

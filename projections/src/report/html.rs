//! The report for people: one self-contained HTML file (inline CSS and SVG,
//! no scripts, no external assets), readable on screen and on paper.

use super::{Bar, CAN_PROVE, CANNOT_PROVE, Figure, Report};
use std::fmt::Write as _;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1.5rem;color:#1b1f24;line-height:1.45}
h1{font-size:1.7rem;margin-bottom:.2rem}h2{font-size:1.3rem;margin-top:2.2rem;border-bottom:2px solid #d0d7de;padding-bottom:.2rem}h3{font-size:1.05rem;margin-top:1.5rem}
table{border-collapse:collapse;width:100%;margin:.6rem 0;font-size:.9rem}th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}th{background:#f3f5f7}
td.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#57606a}.ok{color:#116329;font-weight:600}.bad{color:#a40e26;font-weight:600}td.bad{white-space:nowrap}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85em;word-break:break-all}
.control{border:1px solid #d0d7de;border-radius:6px;padding:.4rem 1rem 1rem;margin:1rem 0;page-break-inside:avoid}
svg{max-width:100%;height:auto}svg text{font-family:system-ui,sans-serif}
@media print{body{margin:0;max-width:none;font-size:10pt}h2{page-break-after:avoid}.control,table,svg{page-break-inside:avoid}a{color:inherit;text-decoration:none}}";

fn figure_value(f: &Figure) -> String {
    match (f.value, f.unit) {
        (None, _) => "n/a".into(),
        (Some(v), "ms") => format!("{v} ms"),
        (Some(v), _) => v.to_string(),
    }
}

/// An inline SVG bar chart with a y axis from 0 to the largest count.
fn chart(title: &str, bars: &[Bar], bar_color: &str) -> String {
    let width = 760.0_f64;
    let height = 300.0_f64;
    // Room above the plot for the title and the tallest bar's count, and on
    // the left for the first slanted label.
    let (left, right, top, bottom) = (84.0, 10.0, 44.0, 84.0);
    let max = bars.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let slot = plot_w / bars.len().max(1) as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{}\">",
        escape(title)
    );
    let _ = write!(svg, "<text x=\"{left}\" y=\"16\" font-size=\"13\" font-weight=\"600\">{}</text>", escape(title));
    let _ = write!(
        svg,
        "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"#57606a\"/><line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#57606a\"/>",
        top + plot_h,
        left + plot_w
    );
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{max}</text><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">0</text>",
        left - 4.0,
        top + 4.0,
        left - 4.0,
        top + plot_h
    );
    let label_every = bars.len().div_ceil(20).max(1);
    for (i, bar) in bars.iter().enumerate() {
        let h = plot_h * bar.count as f64 / max as f64;
        let x = left + slot * i as f64 + slot * 0.15;
        let w = (slot * 0.7).max(1.0);
        let y = top + plot_h - h;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{bar_color}\"><title>{}: {}</title></rect>",
            escape(&bar.label),
            bar.count
        );
        // Counts over bars too narrow for them would overlap; each bar's <title> still gives it.
        if bar.count > 0 && slot >= 24.0 {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\">{}</text>",
                x + w / 2.0,
                y - 2.0,
                bar.count
            );
        }
        if i % label_every == 0 {
            let lx = x + w / 2.0;
            let ly = top + plot_h + 10.0;
            let _ = write!(
                svg,
                "<text x=\"{lx:.1}\" y=\"{ly:.1}\" font-size=\"9\" text-anchor=\"end\" transform=\"rotate(-40 {lx:.1} {ly:.1})\">{}</text>",
                escape(&bar.label)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The HTML text of the report.
pub fn render(report: &Report) -> String {
    let l = &report.ledger;
    let s = &report.settings;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>SOC 2 access evidence: {} to {}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n",
        s.from, s.to
    );
    let _ = writeln!(h, "<h1>SOC 2 access evidence</h1>");
    let _ = writeln!(
        h,
        "<p class=\"muted\">Ledger <code>{}</code> &middot; period <strong>{}</strong> (inclusive) to <strong>{}</strong> (exclusive) &middot; removal SLA {} ms</p>",
        escape(&l.origin),
        s.from,
        s.to,
        s.revoke_sla_ms
    );

    h.push_str("<h2>Summary</h2>\n<table>\n<tr><th>Control</th><th>Title</th><th>Exceptions</th></tr>\n");
    for c in &report.controls {
        let class = if c.exceptions.is_empty() { "ok" } else { "bad" };
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#{0}\">{0}</a></td><td>{1}</td><td class=\"n {class}\">{2}</td></tr>",
            c.id,
            escape(c.title),
            c.exceptions.len()
        );
    }
    h.push_str("</table>\n");

    h.push_str("<h2>What this evidence rests on</h2>\n<table>\n");
    let anchor = l.anchor_size.map_or_else(|| "none given".to_string(), |a| format!("checkpoint of size {a}"));
    for (name, value) in [
        (
            "Entries in the bundle",
            format!("{} to {} ({} entries)", l.first_seq, l.end_seq.saturating_sub(1), l.end_seq - l.first_seq),
        ),
        (
            "Entries of the period",
            if l.period_end_seq > l.period_first_seq {
                format!(
                    "{} to {} ({} entries)",
                    l.period_first_seq,
                    l.period_end_seq - 1,
                    l.period_end_seq - l.period_first_seq
                )
            } else {
                "none".to_string()
            },
        ),
        (
            "Boundary before the period",
            if l.period_first_seq > l.first_seq {
                format!("entry {}", l.first_seq)
            } else {
                "none: the period starts at the ledger's first entry".into()
            },
        ),
        (
            "Boundary after the period",
            if l.period_closed() {
                format!("entry {}", l.period_end_seq)
            } else {
                "none: the ledger ended inside the period; later entries of the period are not covered".into()
            },
        ),
        ("Checkpoint", format!("size {}, root <code>{}</code>", l.checkpoint_size, escape(&l.checkpoint_root))),
        ("Anchor (consistency proved from)", anchor),
    ] {
        let _ = writeln!(h, "<tr><th>{name}</th><td>{value}</td></tr>");
    }
    h.push_str("</table>\n");

    h.push_str("<h3>What the ledger proves</h3>\n<ul>\n");
    for line in CAN_PROVE {
        let _ = writeln!(h, "<li>{}</li>", escape(line));
    }
    h.push_str("</ul>\n<h3>What it cannot prove</h3>\n<ul>\n");
    for line in CANNOT_PROVE {
        let _ = writeln!(h, "<li>{}</li>", escape(line));
    }
    h.push_str("</ul>\n");

    h.push_str("<h2>Charts</h2>\n");
    h.push_str(&chart("Grants activated over the period", &report.grants_over_time, "#0969da"));
    h.push('\n');
    h.push_str(&chart(
        &format!("Time to revoke (removal SLA {} ms)", s.revoke_sla_ms),
        &report.time_to_revoke,
        "#8250df",
    ));
    h.push('\n');

    h.push_str("<h2>Controls</h2>\n");
    for c in &report.controls {
        let _ = writeln!(h, "<div class=\"control\" id=\"{}\">\n<h3>{} &mdash; {}</h3>", c.id, c.id, escape(c.title));
        let _ = writeln!(h, "<p class=\"muted\">{}</p>", escape(c.test));
        let populations: Vec<String> =
            c.populations.iter().map(|p| format!("<a href=\"populations/{p}.csv\">{p}.csv</a>")).collect();
        let _ = writeln!(h, "<p>Populations: {}</p>", populations.join(", "));
        h.push_str("<table>\n<tr><th>Figure</th><th>Value</th></tr>\n");
        for f in &c.figures {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"n\" data-figure=\"{}.{}\">{}</td></tr>",
                escape(f.label),
                c.id,
                f.key,
                figure_value(f)
            );
        }
        h.push_str("</table>\n");
        if c.exceptions.is_empty() {
            h.push_str("<p class=\"ok\">No exceptions.</p>\n");
        } else {
            h.push_str("<table>\n<tr><th>Exception</th><th>Entry</th><th>Related entries</th><th>Detail</th></tr>\n");
            for e in &c.exceptions {
                let related: Vec<String> = e.related.iter().map(u64::to_string).collect();
                let _ = writeln!(
                    h,
                    "<tr><td class=\"bad\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                    e.code,
                    e.seq,
                    related.join(", "),
                    escape(&e.detail)
                );
            }
            h.push_str("</table>\n");
        }
        h.push_str("</div>\n");
    }

    h.push_str("<h2>Populations</h2>\n<table>\n<tr><th>File</th><th>Rows</th><th>Definition</th></tr>\n");
    for p in &report.populations {
        let _ = writeln!(
            h,
            "<tr><td><a href=\"{0}\">{0}</a></td><td class=\"n\">{1}</td><td>{2}</td></tr>",
            p.file(),
            p.rows,
            escape(p.definition)
        );
    }
    h.push_str("</table>\n");

    h.push_str("<h2>Events of the period by kind</h2>\n<table>\n<tr><th>Kind</th><th>Entries</th></tr>\n");
    for (kind, n) in &report.events_by_kind {
        let _ = writeln!(h, "<tr><td><code>{}</code></td><td class=\"n\">{n}</td></tr>", escape(kind));
    }
    h.push_str("</table>\n");
    h.push_str("<p class=\"muted\">Verify this bundle offline: <code>portcullis-verify report BUNDLE --key VERIFIER_KEY</code>. It recomputes every population, figure and exception above from the signed entries.</p>\n</body>\n</html>\n");
    h
}

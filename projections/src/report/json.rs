//! The report for machines: `report.json`, described by
//! `schemas/report.schema.json`. Keys are sorted (serde_json's map), so the
//! text is a function of the report alone.

use super::{Bar, CAN_PROVE, CANNOT_PROVE, Report};
use serde_json::{Value, json};

fn bars(bars: &[Bar]) -> Value {
    Value::Array(bars.iter().map(|b| json!({"label": b.label, "count": b.count})).collect())
}

/// The JSON text of the report (pretty-printed, with a final newline).
pub fn render(report: &Report) -> String {
    let l = &report.ledger;
    let value = json!({
        "format": "portcullis/report/v1",
        "report": "soc2",
        "period": {
            "from": report.settings.from.to_string(),
            "to": report.settings.to.to_string(),
            "closed": l.period_closed(),
        },
        "revoke_sla_ms": report.settings.revoke_sla_ms,
        "ledger": {
            "origin": l.origin,
            "entries": {"first_seq": l.first_seq, "end_seq": l.end_seq},
            "period_entries": {"first_seq": l.period_first_seq, "end_seq": l.period_end_seq},
            "checkpoint": {"size": l.checkpoint_size, "root": l.checkpoint_root},
            "anchor_size": l.anchor_size,
        },
        "events_by_kind": report.events_by_kind.iter().map(|(k, n)| json!({"kind": k, "count": n})).collect::<Vec<_>>(),
        "populations": report.populations.iter().map(|p| json!({
            "name": p.name,
            "title": p.title,
            "file": p.file(),
            "definition": p.definition,
            "columns": p.columns,
            "rows": p.rows,
        })).collect::<Vec<_>>(),
        "controls": report.controls.iter().map(|c| json!({
            "id": c.id,
            "title": c.title,
            "test": c.test,
            "populations": c.populations,
            "figures": c.figures.iter().map(|f| json!({"key": f.key, "label": f.label, "value": f.value, "unit": f.unit})).collect::<Vec<_>>(),
            "exceptions": c.exceptions.iter().map(|e| json!({"code": e.code, "seq": e.seq, "related_seqs": e.related, "detail": e.detail})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "charts": {
            "grants_over_time": bars(&report.grants_over_time),
            "time_to_revoke": bars(&report.time_to_revoke),
        },
        "statements": {"can_prove": CAN_PROVE, "cannot_prove": CANNOT_PROVE},
    });
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

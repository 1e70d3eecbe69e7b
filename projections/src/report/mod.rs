//! SOC 2 evidence reports: the populations, controls and figures of a period,
//! computed purely from ledger events, and the files of a report bundle.
//!
//! The service (`portcullis report soc2`, `POST /v1/reports`) and the auditor's
//! verifier (`portcullis-verify report`) run this same code: the generator to
//! write the CSV, JSON and HTML files, the verifier to recompute them from the
//! verified entries and compare byte for byte. Nothing here reads a clock or
//! does I/O, so the same events and settings always give the same bytes.
//!
//! - [`date`]: the `--from`/`--to` arguments (RFC 3339 or `YYYY-MM-DD`).
//! - [`compute`]: the populations, the controls, their figures and exceptions.
//! - [`csv`]: RFC 4180 text of a population.
//! - [`json`], [`html`]: the report for machines and for people.
//! - [`bundle`]: the manifest note, the range proof file and the entries file.

pub mod bundle;
pub mod compute;
pub mod csv;
pub mod date;
pub mod html;
pub mod json;

use portcullis_format::time::Timestamp;

/// The kind of the event that records a report's generation (version 1).
pub const KIND_REPORT_GENERATED: &str = "report.generated";

/// What a report is computed over and with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The period is `from <= ts < to`.
    pub from: Timestamp,
    pub to: Timestamp,
    /// A removal later than this after access was due to end is an exception.
    pub revoke_sla_ms: u64,
}

/// What the bundle's entries and checkpoint establish about the ledger; shown
/// in the report so the reader sees exactly what it stands on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerFacts {
    pub origin: String,
    /// The bundle holds entries `first_seq..end_seq` (boundary entries included).
    pub first_seq: u64,
    pub end_seq: u64,
    /// The entries of the period itself: `period_first_seq..period_end_seq`.
    pub period_first_seq: u64,
    pub period_end_seq: u64,
    /// The checkpoint the entries are proved against.
    pub checkpoint_size: u64,
    /// Base64 of the checkpoint's root.
    pub checkpoint_root: String,
    /// The size of the auditor's anchor checkpoint the bundle is proved consistent with.
    pub anchor_size: Option<u64>,
}

impl LedgerFacts {
    /// Whether an entry after the period closes it (else the ledger ended inside the period).
    pub fn period_closed(&self) -> bool {
        self.period_end_seq < self.end_seq
    }
}

/// Receives the rows of the populations as the fold computes them: most
/// rows as their entry streams past, the grants and break-glass rows (which
/// later entries complete) when the fold finishes. Each population's rows
/// arrive in their order in its CSV file.
pub trait RowSink {
    /// A row of population `population` (an index into
    /// [`compute::POPULATIONS`]) tied to entry `seq`; `record` is its CSV
    /// record without the line end.
    fn row(&mut self, population: usize, seq: u64, record: &str);
}

/// A population: every event of one sort in the period, by its exact definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Population {
    pub name: &'static str,
    pub title: &'static str,
    /// The exact rule that selects the rows and computes the columns (one line of text).
    pub definition: &'static str,
    pub columns: &'static [&'static str],
    /// How many rows it has (they went to the [`RowSink`]).
    pub rows: usize,
}

impl Population {
    /// The bundle path of its CSV file.
    pub fn file(&self) -> String {
        bundle::population_file(self.name)
    }
}

/// A computed figure of a control. `None` when it is undefined (a median of nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Figure {
    pub key: &'static str,
    pub label: &'static str,
    pub value: Option<i64>,
    /// `count` or `ms`.
    pub unit: &'static str,
}

/// An entry that breaks a control.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exception {
    pub code: &'static str,
    /// The entry that is the exception.
    pub seq: u64,
    /// Entries that explain it (the request, the approvals, ...).
    pub related: Vec<u64>,
    pub detail: String,
}

/// A SOC 2 control and what the period's events show about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    pub id: &'static str,
    pub title: &'static str,
    /// How the ledger supports it, and the exception rules.
    pub test: &'static str,
    pub populations: &'static [&'static str],
    pub figures: Vec<Figure>,
    pub exceptions: Vec<Exception>,
}

/// A bar of a chart: a label and a count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bar {
    pub label: String,
    pub count: u64,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub settings: Settings,
    pub ledger: LedgerFacts,
    pub populations: Vec<Population>,
    pub controls: Vec<Control>,
    /// Events of the period by kind, sorted by kind.
    pub events_by_kind: Vec<(String, u64)>,
    /// Grants activated per interval of the period.
    pub grants_over_time: Vec<Bar>,
    /// Removals by time-to-revoke bucket.
    pub time_to_revoke: Vec<Bar>,
}

/// What the ledger proves, stated in every report.
pub const CAN_PROVE: &[&str] = &[
    "Every entry in this bundle was signed by the log key pinned by the verifier (or a key it rotated to in a verified rotation) and sits at its position in the hash chain and in the Merkle tree of the enclosed checkpoint.",
    "The entries of the period are complete and in order: they are contiguous by sequence number, chained by hash, and enclosed by one boundary entry before the period and one after it (unless the ledger ended inside the period, which the report then says).",
    "Every row of every population and every figure and exception of every control is recomputed by the verifier from those entries with the definitions in the signed manifest; any difference is reported by file and row.",
    "With an anchor (a checkpoint the auditor pinned earlier) the enclosed checkpoint extends it: the log was not truncated, rolled back or forked since.",
];

/// What it cannot prove, stated in every report.
pub const CANNOT_PROVE: &[&str] = &[
    "That every real-world action was submitted to the ledger: a change made outside Portcullis, or by a source that never reported to it, leaves no entry. The ledger records what was sent to it, completely and unalterably, not what was withheld.",
    "That timestamps are true: they are the log's clock, only checked never to decrease. The period is selected by these timestamps.",
    "That the actor of an event is the person: it is what authentication (OIDC, a static token) established at the time.",
    "That the checkpoint is the latest one, or the one shown to everyone: only an anchor or witness cosignatures show that the log did not keep two histories.",
    "That the holder of the log key did not write a different history from the start: only checkpoints pinned or witnessed earlier limit that.",
    "Grants whose request or approvals were recorded before the period are shown with the approval evidence outside this bundle; removals of grants after the period are not in it.",
];

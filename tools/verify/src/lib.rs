//! The auditor's offline verifier for Portcullis ledgers.
//!
//! It trusts nothing but the pinned verifier keys given with `--key`, and
//! depends on nothing but the format crate (no tokio, axum, kube or SQL).
//!
//! ```text
//! portcullis-verify EXPORT_DIR --key VKEY [--key VKEY@FROM-TO ...] [--anchor CHECKPOINT_FILE]
//!                   [--allow-partial] [--threads N] [--json]
//! portcullis-verify proof FILE.tlog-proof --key VKEY [--json]
//! portcullis-verify report BUNDLE --key VKEY [--anchor CHECKPOINT_FILE] [--witness-policy FILE] [--json]
//! ```
//!
//! Exit status: 0 verified, 1 verification failed, 2 bad usage or unreadable input.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use portcullis_format::keys::{KeySet, PinnedKey};
use portcullis_format::proof_file::ProofFile;
use portcullis_format::verify::{Options, verify_export};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

pub mod report;

pub const USAGE: &str = "\
usage: portcullis-verify EXPORT_DIR --key VKEY [--key VKEY ...] [--anchor CHECKPOINT_FILE]
                         [--witness-policy FILE] [--allow-partial] [--threads N] [--json]
       portcullis-verify proof FILE --key VKEY [--key VKEY ...] [--json]
       portcullis-verify report BUNDLE --key VKEY [--key VKEY ...] [--anchor CHECKPOINT_FILE]
                         [--witness-policy FILE] [--json]

Verifies a Portcullis ledger export (C2SP tlog-tiles layout), a single
tlog-proof evidence file, or a SOC 2 report bundle (every entry, the proofs,
every population, figure and file), trusting only the pinned verifier keys.

  --key VKEY       a pinned verifier key <name>+<id>+<base64>, or a file holding one;
                   VKEY@FROM-TO limits it to entries FROM..TO (TO exclusive, may be empty)
  --anchor FILE    a checkpoint pinned earlier: the export must extend it (catches
                   truncation, rollback and forks)
  --witness-policy FILE  a C2SP tlog-policy file: the export's checkpoint must carry
                   cosignatures of a quorum of its witnesses (catches a log that
                   truncates or forks its history and re-signs)
  --allow-partial  accept a range export whose leading entry bundles are absent
  --threads N      worker threads (default: all cores)
  --json           machine-readable output on stdout

Exit status: 0 verified, 1 verification failed, 2 bad usage or unreadable input.
";

struct Args {
    command: Command,
    keys: Vec<PinnedKey>,
    anchor: Option<PathBuf>,
    witness_policy: Option<PathBuf>,
    allow_partial: bool,
    threads: Option<usize>,
    json: bool,
}

enum Command {
    Export(PathBuf),
    Proof(PathBuf),
    Report(PathBuf),
    Help,
    Version,
}

fn read_key(value: &str) -> Result<PinnedKey, String> {
    // A value that names a readable file is read; otherwise it is the key itself.
    let (spec, range) = match value.rsplit_once('@') {
        Some((spec, range)) if range.contains('-') => (spec, Some(range)),
        _ => (value, None),
    };
    let path = std::path::Path::new(spec);
    let key_text = if !spec.contains('+') && path.is_file() {
        std::fs::read_to_string(path).map_err(|e| format!("--key {spec}: {e}"))?.trim().to_string()
    } else {
        spec.to_string()
    };
    let full = match range {
        Some(range) => format!("{key_text}@{range}"),
        None => key_text,
    };
    PinnedKey::parse(&full).map_err(|e| format!("--key {value}: {e}"))
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut parsed = Args {
        command: Command::Help,
        keys: Vec::new(),
        anchor: None,
        witness_policy: None,
        allow_partial: false,
        threads: None,
        json: false,
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| iter.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => {
                return Ok(Args { command: Command::Help, ..parsed });
            }
            "-V" | "--version" => {
                return Ok(Args { command: Command::Version, ..parsed });
            }
            "--key" => parsed.keys.push(read_key(&value("--key")?)?),
            "--anchor" => parsed.anchor = Some(PathBuf::from(value("--anchor")?)),
            "--witness-policy" => parsed.witness_policy = Some(PathBuf::from(value("--witness-policy")?)),
            "--allow-partial" => parsed.allow_partial = true,
            "--json" => parsed.json = true,
            "--threads" => {
                let v = value("--threads")?;
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or(format!("--threads {v}: must be 1 to 256"))?;
                parsed.threads = Some(n);
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            _ => positional.push(arg.clone()),
        }
    }
    parsed.command = match positional.as_slice() {
        [] => return Err("missing EXPORT_DIR".into()),
        [cmd, file] if cmd == "proof" => Command::Proof(PathBuf::from(file)),
        [cmd, dir] if cmd == "report" => Command::Report(PathBuf::from(dir)),
        [dir] => Command::Export(PathBuf::from(dir)),
        _ => return Err(format!("unexpected arguments: {}", positional.join(" "))),
    };
    if parsed.keys.is_empty() {
        return Err("at least one --key is required: the verifier trusts only pinned keys".into());
    }
    Ok(parsed)
}

/// Runs the verifier with `args` (without the program name); returns the exit status.
pub fn run(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let args = match parse_args(args) {
        Ok(args) => args,
        Err(message) => {
            let _ = writeln!(err, "portcullis-verify: {message}\n\n{USAGE}");
            return 2;
        }
    };
    match &args.command {
        Command::Help => {
            let _ = write!(out, "{USAGE}");
            0
        }
        Command::Version => {
            let _ = writeln!(out, "portcullis-verify {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Command::Proof(path) => run_proof(&args, path, out, err),
        Command::Export(dir) => run_export(&args, dir, out, err),
        Command::Report(dir) => report::run(
            &report::CliArgs {
                keys: &args.keys,
                anchor: args.anchor.as_deref(),
                witness_policy: args.witness_policy.as_deref(),
                json: args.json,
            },
            dir,
            out,
            err,
        ),
    }
}

fn run_proof(args: &Args, path: &std::path::Path, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = writeln!(err, "portcullis-verify: {}: {e}", path.display());
            return 2;
        }
    };
    let result = ProofFile::parse(&bytes).and_then(|proof| proof.verify(&KeySet::new(args.keys.clone())));
    match result {
        Ok(verified) => {
            let event = &verified.entry.event;
            if args.json {
                let body = serde_json::json!({
                    "ok": true,
                    "origin": verified.checkpoint.origin,
                    "checkpoint_size": verified.checkpoint.size,
                    "root": B64.encode(verified.checkpoint.root),
                    "seq": event.seq,
                    "kind": event.draft.kind,
                    "id": event.draft.id.to_string(),
                    "ts": event.ts.to_string(),
                });
                let _ = writeln!(out, "{body}");
            } else {
                let _ = writeln!(
                    out,
                    "OK: entry {} ({} {}, {}) is included in {} at size {}",
                    event.seq,
                    event.draft.kind,
                    event.draft.id,
                    event.ts,
                    verified.checkpoint.origin,
                    verified.checkpoint.size
                );
            }
            0
        }
        Err(e) => {
            if args.json {
                let _ = writeln!(out, "{}", serde_json::json!({"ok": false, "reason": e.to_string()}));
            } else {
                let _ = writeln!(out, "FAILED: {}: {e}", path.display());
            }
            1
        }
    }
}

fn run_export(args: &Args, dir: &std::path::Path, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let anchor = match &args.anchor {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                let _ = writeln!(err, "portcullis-verify: --anchor {}: {e}", path.display());
                return 2;
            }
        },
        None => None,
    };
    if !dir.is_dir() {
        let _ = writeln!(err, "portcullis-verify: {} is not a directory", dir.display());
        return 2;
    }
    let witness_policy = match read_witness_policy(args.witness_policy.as_deref()) {
        Ok(policy) => policy,
        Err(message) => {
            let _ = writeln!(err, "portcullis-verify: {message}");
            return 2;
        }
    };
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let show_progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    let progress = |done: u64, total: u64| {
        if done % 65_536 < 256 || done == total {
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let percent = (done * 100).checked_div(total).unwrap_or(100);
            let filled = (percent / 5) as usize;
            eprint!(
                "\r[{}{}] {done}/{total} entries ({percent}%), {rate:.0}/s ",
                "#".repeat(filled),
                " ".repeat(20 - filled)
            );
            if done == total {
                eprintln!();
            }
        }
    };
    let options = Options {
        keys: KeySet::new(args.keys.clone()),
        anchor,
        allow_partial: args.allow_partial,
        threads,
        progress: if show_progress { Some(&progress) } else { None },
    };
    let result = verify_export(dir, &options).and_then(|summary| match &witness_policy {
        Some(policy) => {
            check_witnesses(policy, &dir.join(portcullis_format::export::CHECKPOINT_FILE)).map(|()| summary)
        }
        None => Ok(summary),
    });
    let elapsed = started.elapsed();
    match result {
        Ok(summary) => {
            let rate = summary.entries_verified as f64 / elapsed.as_secs_f64().max(1e-9);
            if args.json {
                let body = serde_json::json!({
                    "ok": true,
                    "origin": summary.checkpoint.origin,
                    "size": summary.checkpoint.size,
                    "root": B64.encode(summary.checkpoint.root),
                    "first_entry": summary.first_entry,
                    "entries_verified": summary.entries_verified,
                    "keys": summary.keys.iter().map(|(k, from)| serde_json::json!({"vkey": k, "from_seq": from})).collect::<Vec<_>>(),
                    "first_ts": summary.first_ts,
                    "last_ts": summary.last_ts,
                    "anchor_size": summary.anchor_size,
                    "elapsed_ms": elapsed.as_millis() as u64,
                    "entries_per_second": rate.round() as u64,
                });
                let _ = writeln!(out, "{body}");
            } else {
                let _ = writeln!(out, "OK: {} verified", dir.display());
                let _ = writeln!(out, "  log:      {}", summary.checkpoint.origin);
                let _ = writeln!(
                    out,
                    "  size:     {} entries (checkpoint root {})",
                    summary.checkpoint.size,
                    B64.encode(summary.checkpoint.root)
                );
                let range = if summary.first_entry > 0 {
                    format!(
                        " (entries {}..{}; earlier ones by hash only)",
                        summary.first_entry, summary.checkpoint.size
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(out, "  entries:  {} checked{range}", summary.entries_verified);
                if let (Some(first), Some(last)) = (&summary.first_ts, &summary.last_ts) {
                    let _ = writeln!(out, "  time:     {first} .. {last}");
                }
                for (key, from) in &summary.keys {
                    let _ = writeln!(out, "  key:      {key} from entry {from}");
                }
                if let Some(anchor) = summary.anchor_size {
                    let _ = writeln!(out, "  anchor:   consistent with the pinned checkpoint of size {anchor}");
                }
                let _ = writeln!(
                    out,
                    "  speed:    {rate:.0} entries/s on {threads} threads ({:.2}s)",
                    elapsed.as_secs_f64()
                );
            }
            0
        }
        Err(failure) => {
            if args.json {
                let body = serde_json::json!({
                    "ok": false,
                    "check": failure.check.code(),
                    "seq": failure.seq,
                    "path": failure.path,
                    "reason": failure.reason,
                });
                let _ = writeln!(out, "{body}");
            } else {
                let _ = writeln!(out, "FAILED [{}]: {failure}", failure.check.code());
            }
            1
        }
    }
}

/// Reads a `--witness-policy` file.
///
/// # Errors
/// A message naming the file and the bad line.
pub fn read_witness_policy(
    path: Option<&std::path::Path>,
) -> Result<Option<portcullis_format::witness::Policy>, String> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("--witness-policy {}: {e}", path.display()))?;
    portcullis_format::witness::Policy::parse(&text)
        .map(Some)
        .map_err(|e| format!("--witness-policy {}: {e}", path.display()))
}

/// Checks that the checkpoint at `path` (already verified against the pinned
/// keys) carries the cosignatures `policy` requires.
///
/// # Errors
/// A [`portcullis_format::verify::Failure`] with the `witness-quorum` check.
pub fn check_witnesses(
    policy: &portcullis_format::witness::Policy,
    path: &std::path::Path,
) -> Result<(), portcullis_format::verify::Failure> {
    let note = std::fs::read_to_string(path).unwrap_or_default();
    policy.check(&note).map_err(|e| portcullis_format::verify::Failure {
        check: portcullis_format::verify::Check::WitnessQuorum,
        seq: None,
        path: Some(path.display().to_string()),
        reason: e.to_string(),
    })
}

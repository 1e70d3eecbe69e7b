//! `portcullis serve`: opens (or creates) the ledger on the embedded SQLite
//! store, generates the log key on first start, and serves the ledger over
//! HTTP until SIGTERM or Ctrl-C.
//!
//! Shutdown order: stop accepting connections and finish in-flight requests,
//! then let the sequencer commit everything already queued and sign a final
//! checkpoint, then close the store. An append is acknowledged only after
//! its commit, so nothing acknowledged is lost at any point of this.

use crate::api::{AppState, app};
use crate::auth::Tokens;
use crate::config::ServeConfig;
use crate::keyfile;
use crate::ledger::{Ledger, LedgerConfig, LedgerError, TailCheckError};
use crate::policy::Policy;
use crate::workflow::Workflow;
use anyhow::Context as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Loads the log key, or generates it on first start. Returns the key and whether it is new.
///
/// # Errors
/// When the key file cannot be read or written, or is readable by others.
pub fn load_or_generate_key(config: &ServeConfig) -> anyhow::Result<(portcullis_format::note::SignerKey, bool)> {
    let path = config.key_path();
    if path.exists() {
        let key = keyfile::load(&path)?;
        if let Some(origin) = &config.origin
            && origin != key.name()
        {
            anyhow::bail!(
                "the configured origin {origin:?} differs from the name of the existing key {:?} in {}; \
                     the origin of a ledger cannot change",
                key.name(),
                path.display()
            );
        }
        return Ok((key, false));
    }
    if config.database_path().exists() || config.store.as_deref().is_some_and(store_holds_a_ledger) {
        anyhow::bail!(
            "{} holds a ledger but its key {} is missing; restore the key (a new key cannot continue an existing \
             ledger; every replica on a shared store needs a copy of the log key)",
            config.store.as_deref().map_or_else(|| config.database_path().display().to_string(), crate::store::redact),
            path.display()
        );
    }
    let origin = match &config.origin {
        Some(origin) => origin.clone(),
        None => {
            let mut suffix = [0u8; 4];
            getrandom::fill(&mut suffix).context("no system randomness")?;
            format!("portcullis.local/ledger-{}", suffix.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
    };
    Ok((keyfile::generate(&path, &origin)?, true))
}

/// Opens the store and the ledger for `config`.
///
/// # Errors
/// When the key or store cannot be opened, or the ledger's tail does not verify.
pub fn open_ledger(config: &ServeConfig) -> anyhow::Result<(Ledger, crate::ledger::SequencerThread, bool)> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let (key, generated) = load_or_generate_key(config)?;
    let store = open_store(config)?;
    match Ledger::open(Arc::clone(&store), key, LedgerConfig::default()) {
        Ok((ledger, thread)) => Ok((ledger, thread, generated)),
        Err(LedgerError::TailCheck(TailCheckError::WrongKey { in_force, .. }))
            if next_key_matches(config, &in_force) =>
        {
            // A rotation was recorded but the key files were not swapped: finish it.
            promote_next_key(config)?;
            let key = keyfile::load(&config.key_path())?;
            let (ledger, thread) = Ledger::open(store, key, LedgerConfig::default())?;
            Ok((ledger, thread, false))
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens the configured ledger store (SQLite in the data directory by default).
///
/// # Errors
/// A bad URL, an unreachable database, or a store of an unknown schema version.
pub fn open_store(config: &ServeConfig) -> anyhow::Result<Arc<dyn crate::store::Store>> {
    let url = config.store_url();
    crate::store::open_url(&url).with_context(|| format!("opening the ledger store {}", crate::store::redact(&url)))
}

fn store_holds_a_ledger(url: &str) -> bool {
    crate::store::open_url(url).and_then(|store| store.size()).is_ok_and(|size| size > 0)
}

/// Where a rotation writes the new key before recording it.
pub fn next_key_path(config: &ServeConfig) -> PathBuf {
    config.data_dir.join("log.key.next")
}

fn next_key_matches(config: &ServeConfig, in_force: &str) -> bool {
    keyfile::load(&next_key_path(config)).is_ok_and(|k| k.verifier().to_string() == in_force)
}

/// Makes the rotated-to key the log key: the old key files are kept as
/// `log.key.retired-<key id>` (and `.pub`), the new ones take their place.
///
/// # Errors
/// When a rename fails.
pub fn promote_next_key(config: &ServeConfig) -> anyhow::Result<()> {
    let current = config.key_path();
    let next = next_key_path(config);
    let old = keyfile::load(&current)?;
    let retired = config.data_dir.join(format!("log.key.retired-{:08x}", old.verifier().key_id()));
    // Keep a copy of the old key first (a link), then replace the key in one
    // atomic rename: at every instant `log.key` holds a complete key.
    for (from, to) in [(&current, &retired), (&keyfile::public_path(&current), &keyfile::public_path(&retired))] {
        if !to.exists() {
            std::fs::hard_link(from, to).with_context(|| format!("linking {} to {}", from.display(), to.display()))?;
        }
    }
    for (from, to) in [(next.clone(), current.clone()), (keyfile::public_path(&next), keyfile::public_path(&current))] {
        std::fs::rename(&from, &to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    }
    if let Ok(dir) = std::fs::File::open(&config.data_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Runs the service until a shutdown signal.
///
/// # Errors
/// Start-up failures (key, store, tail check, address in use).
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    // Everything that can be refused is read before the ledger is touched.
    // A policy file that does not parse is refused with its line and reason. On a
    // new ledger that stops the start; on an existing one the policy recorded in
    // the ledger stays in force.
    let policy = match &config.policy {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading the policy {}", path.display()))?;
            match Policy::parse(&text) {
                Ok(policy) => Some(Arc::new(policy)),
                Err(e) if config.ledger_may_exist() => {
                    tracing::error!("the policy {} is refused: {e}; the policy in force stays", path.display());
                    None
                }
                Err(e) => anyhow::bail!("the policy {} is refused: {e}", path.display()),
            }
        }
        None => None,
    };
    let tokens = Tokens::load(&config.tokens_path())?;
    let oidc = match &config.oidc {
        Some(settings) => {
            Some(crate::oidc::Oidc::open(settings.clone()).await.map_err(|e| anyhow::anyhow!("oidc: {e}"))?)
        }
        None => None,
    };
    let (ledger, thread, generated) = open_ledger(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let address = listener.local_addr()?;
    let vkey = ledger.store().keys()?.last().map(|k| k.vkey.clone()).unwrap_or_default();
    let head = ledger.head();
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "portcullis serving ledger {} on http://{address}", ledger.origin());
        let _ = writeln!(out, "  store:        {} ({} entries)", ledger.store().describe(), head.size);
        let key_note = if generated { " (generated now: keep it safe and back it up)" } else { "" };
        let _ = writeln!(out, "  signing key:  {}{key_note}", config.key_path().display());
        let _ = writeln!(out, "  verifier key: {vkey}");
        let _ = writeln!(
            out,
            "  checkpoints:  every {}s while the ledger grows; GET /checkpoint",
            config.checkpoint_interval_secs
        );
        match (&config.policy, &policy) {
            (Some(path), Some(policy)) => {
                let _ = writeln!(
                    out,
                    "  policy:       {} ({} rules, sha256 {})",
                    path.display(),
                    policy.rules().len(),
                    policy.hash_hex()
                );
            }
            (Some(path), None) => {
                let _ = writeln!(
                    out,
                    "  policy:       {} refused (see the error above); the policy recorded in the ledger stays in force",
                    path.display()
                );
            }
            (None, _) => {
                let _ = writeln!(
                    out,
                    "  policy:       not configured: the workflow API (/v1/requests, /v1/grants) answers 503;"
                );
                let _ =
                    writeln!(out, "                start with --policy FILE (example: schemas/policy.example.yaml)");
            }
        }
        if tokens.is_empty() {
            let _ = writeln!(
                out,
                "  tokens:       none in {}; create one with: portcullis token create --sub NAME --groups G1,G2",
                config.tokens_path().display()
            );
        } else {
            let _ = writeln!(out, "  tokens:       {}", config.tokens_path().display());
        }
        match config.reconciler.as_ref().filter(|r| !r.clusters.is_empty()) {
            Some(reconciler) => {
                let names: Vec<&str> = reconciler.clusters.iter().map(|c| c.name.as_str()).collect();
                let _ = writeln!(
                    out,
                    "  clusters:     {} (grants become Roles and RoleBindings; leader lease {}/{})",
                    names.join(", "),
                    reconciler.lease_namespace,
                    reconciler.lease_name
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  not configured: clusters ([reconciler] in the config file; grants are recorded, not applied),"
                );
            }
        }
        match &config.oidc {
            Some(oidc) => {
                let _ = writeln!(
                    out,
                    "  oidc:         issuer {} audience {} (keys from {})",
                    oidc.issuer,
                    oidc.audience,
                    match (&oidc.jwks_url, &oidc.jwks_file) {
                        (Some(url), _) => format!("{url}, fetched every {} s", oidc.jwks_refresh_secs),
                        (None, Some(file)) => file.display().to_string(),
                        (None, None) => String::new(),
                    }
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "                  OIDC identity provider ([oidc] in the config file; static tokens only)"
                );
            }
        }
        if config.witnesses.is_empty() {
            let _ = writeln!(out, "  witnesses:    none ([[witnesses]] in the config file: url, vkey)");
        } else {
            let _ = writeln!(out, "  witnesses:    {} (each checkpoint is sent for cosigning)", config.witnesses.len());
        }
        if config.webhooks.is_empty() {
            let _ = writeln!(out, "  webhooks:     none ([[webhooks]] in the config file)");
        } else {
            let _ = writeln!(out, "  webhooks:     {} (signed with HMAC-SHA256, retried)", config.webhooks.len());
        }
        let _ = out.flush();
    }
    let checkpointer =
        tokio::spawn(ledger.clone().run_checkpointer(Duration::from_secs(config.checkpoint_interval_secs)));
    let pusher = (!config.witnesses.is_empty()).then(|| {
        let every = Duration::from_secs(config.checkpoint_interval_secs);
        tokio::spawn(crate::witness::run_pusher(ledger.clone(), config.witnesses.clone(), every))
    });
    let workflow = match (&config.policy, policy) {
        (Some(_), policy) => Some(Workflow::open(ledger.clone(), policy).await?),
        (None, _) => None,
    };
    if let Some(workflow) = &workflow {
        let state = workflow.current().await?;
        for (hash, (_, by)) in &state.proposals {
            println!("  policy change {hash} proposed by {by} awaits a second admin: POST /v1/policy/{hash}/approve");
        }
        if state.policy.is_none() {
            println!("  no policy is in force: the workflow API answers 503 until one is loaded");
        }
    }
    let scheduler = workflow.clone().map(|w| tokio::spawn(w.run_scheduler()));
    let notifier = (!config.webhooks.is_empty()).then(|| {
        let cursor = config.data_dir.join("webhooks.cursor");
        tokio::spawn(crate::notify::run(ledger.clone(), config.webhooks.clone(), cursor))
    });
    let warnings = workflow.clone().filter(|_| !config.webhooks.is_empty()).map(|workflow| {
        tokio::spawn(crate::notify::run_warnings(workflow, config.webhooks.clone(), crate::notify::WARNING_LEAD))
    });
    let reconciler = match (config.reconciler.as_ref().filter(|r| !r.clusters.is_empty()), &workflow) {
        (Some(settings), Some(workflow)) => {
            let identity = crate::reconciler::default_identity();
            Some(Arc::new(crate::reconciler::Reconciler::start(settings, Arc::clone(workflow), identity).await?))
        }
        (Some(_), None) => anyhow::bail!("[reconciler] clusters are configured but no policy is: grants need a policy"),
        (None, _) => None,
    };
    let refresher = oidc.clone().map(|oidc| tokio::spawn(oidc.run_refresher()));
    let mut state = AppState::new(ledger.clone(), workflow, tokens);
    state.oidc = oidc;
    state.reconciler = reconciler.clone();
    state.reports = Some(crate::report::ReportSettings::new(&config));
    let state = Arc::new(state);
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown_signal()).await.context("serving HTTP")?;
    tracing::info!("shutting down: committing queued events and signing a final checkpoint");
    for task in [scheduler, notifier, warnings, pusher, refresher].into_iter().flatten() {
        task.abort();
    }
    // The reconciler hands its leases over and records what it still holds before the ledger closes.
    if let Some(reconciler) = &reconciler {
        reconciler.shutdown().await;
    }
    ledger.close().await;
    checkpointer.abort();
    drop(ledger);
    tokio::task::spawn_blocking(move || thread.join()).await.context("joining the sequencer")?;
    println!("portcullis stopped cleanly");
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

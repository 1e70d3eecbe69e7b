//! The `portcullis` binary: the service and its command-line tools.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use portcullis::config::{self, ServeConfig};
use portcullis::keyfile;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use hyper::Method;
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Just-in-time, approval-gated access to Kubernetes routes, with a verifiable ledger"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// The config file (TOML); flags override it.
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    /// Where the ledger database and the log key live [default: portcullis-data].
    #[arg(long, env = "PORTCULLIS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The ledger store: postgres://user@host/db, or sqlite:PATH [default: sqlite:DATA_DIR/ledger.db].
    #[arg(long, env = "PORTCULLIS_STORE")]
    store: Option<String>,
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// The server's URL [env PORTCULLIS_SERVER, client config file, default http://127.0.0.1:8480].
    #[arg(long)]
    server: Option<String>,
    /// The bearer token [env PORTCULLIS_TOKEN, client config file].
    #[arg(long)]
    token: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for a subject and its groups; prints the token once.
    Create {
        #[command(flatten)]
        common: Common,
        /// The subject (user name) the token authenticates as.
        #[arg(long)]
        sub: String,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// The tokens file [default: DATA_DIR/tokens].
        #[arg(long)]
        tokens: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// SOC 2 evidence (CC6.1, CC6.2, CC6.3, CC7.2, CC8.1): populations, controls, HTML, JSON, entries, proofs, signed manifest.
    Soc2 {
        /// The start of the period, inclusive: YYYY-MM-DD (UTC) or an RFC 3339 date-time.
        #[arg(long)]
        from: String,
        /// The end of the period, exclusive: YYYY-MM-DD (UTC) or an RFC 3339 date-time.
        #[arg(long)]
        to: String,
        /// A checkpoint the auditor pinned earlier: the bundle proves the ledger extends it.
        #[arg(long)]
        anchor: Option<PathBuf>,
        /// The bundle directory to write (must be absent or empty).
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the service on the embedded SQLite store (keys are generated on first start).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on [default: 127.0.0.1:8480].
        #[arg(long, env = "PORTCULLIS_LISTEN")]
        listen: Option<SocketAddr>,
        /// The log's name (origin), used when the key is first generated.
        #[arg(long)]
        origin: Option<String>,
        /// Seconds between checkpoints while the ledger grows [default: 1].
        #[arg(long)]
        checkpoint_interval_secs: Option<u64>,
        /// The access policy (YAML); without it the workflow API answers 503.
        #[arg(long, env = "PORTCULLIS_POLICY")]
        policy: Option<PathBuf>,
        /// The static tokens file [default: DATA_DIR/tokens].
        #[arg(long)]
        tokens: Option<PathBuf>,
    },
    /// Copy a ledger between stores (e.g. SQLite to PostgreSQL), verifying every entry and the
    /// final checkpoint; rerun to resume; a target holding another ledger is refused.
    Migrate {
        /// The source store URL (postgres://..., sqlite:PATH).
        #[arg(long)]
        from: String,
        /// The target store URL; created (schema) if needed.
        #[arg(long)]
        to: String,
    },
    /// Manage static bearer tokens (stored only as hashes).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run an independent witness (C2SP tlog-witness) that cosigns the checkpoints of the given logs.
    ///
    /// It cosigns a checkpoint only if the log signed it and it is consistent with the largest one
    /// it cosigned before (kept in --state, written atomically), so a log cannot truncate or fork
    /// its history unseen. Make its key with `portcullis keygen --name witness.example/w1 --out FILE`.
    Witness {
        #[arg(long, default_value = "127.0.0.1:8490")]
        listen: std::net::SocketAddr,
        /// The witness's private key.
        #[arg(long)]
        key: PathBuf,
        /// The verifier key of a log to witness (the key itself or a file holding it); repeatable.
        #[arg(long = "log-key", required = true)]
        log_keys: Vec<String>,
        /// Where the witness keeps what it cosigned (created on first use).
        #[arg(long)]
        state: PathBuf,
    },
    /// Write a new Ed25519 key pair: PATH (private, mode 0600) and PATH.pub; print the verifier key.
    Keygen {
        /// The key name: the origin of the log it will sign, e.g. portcullis.example.com/ledger.
        #[arg(long)]
        name: String,
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Export the ledger in the C2SP tlog-tiles layout, with its checkpoint and entries.jsonl.
    Export {
        /// The target directory (must be absent or empty).
        dir: PathBuf,
        #[command(flatten)]
        common: Common,
        /// First entry to include (rounded down to a multiple of 256); earlier ones are exported as hashes only.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Export the tree of this checkpointed size instead of the latest checkpoint.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Sign a checkpoint of the ledger's current size and print it.
    Checkpoint {
        #[command(flatten)]
        common: Common,
    },
    /// Write the tlog-proof evidence file of one entry.
    Proof {
        /// The entry's sequence number.
        seq: u64,
        #[command(flatten)]
        common: Common,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Rotate the log's signing key (with the service stopped): the rotation is an entry signed by both keys.
    RotateKey {
        #[command(flatten)]
        common: Common,
    },
    /// Ask for access (a client command: it calls the server).
    Request {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        namespace: String,
        /// ingresses, httproutes, grpcroutes or gateways.
        #[arg(long)]
        kind: String,
        /// An object name (repeat for several; none: every object of the kind, where policy allows).
        #[arg(long = "name")]
        names: Vec<String>,
        /// view, edit or manage.
        #[arg(long, default_value = "edit")]
        access: String,
        /// How long, from when access is granted: 30m, 2h, 1h30m.
        #[arg(long)]
        duration: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        ticket: Option<String>,
        /// Self-grant under a break-glass rule (flagged, notified, reviewed later).
        #[arg(long)]
        break_glass: bool,
    },
    /// Approve a request.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deny a request.
    Deny {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Withdraw your own pending request.
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List requests.
    Requests {
        /// pending, granted, denied, cancelled or expired.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List grants.
    Grants {
        /// Only active grants.
        #[arg(long)]
        active: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// End your grant early ("I'm done").
    End {
        grant: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Take your grant's one-time kubeconfig (rules with credential: service-account).
    ///
    /// The token in it expires with the grant and stops working when the grant
    /// ends; it is handed out once, so keep the file (mode 0600).
    Kubeconfig {
        grant: String,
        /// Write it to this new file (mode 0600) instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask for more time on your grant.
    Extend {
        grant: String,
        #[arg(long)]
        duration: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Take a grant away (approvers of its rule, admins).
    Revoke {
        grant: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Who could do what to an object at a time (default: now).
    Access {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        kind: String,
        #[arg(long)]
        name: Option<String>,
        /// RFC 3339 UTC with microseconds, e.g. 2026-11-28T10:00:00.000000Z.
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow the ledger's events as they are appended.
    Watch {
        /// Start at this entry (default: the beginning).
        #[arg(long, default_value_t = 0)]
        cursor: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Who the server says you are.
    Whoami {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write an evidence report bundle for a period (service stopped); see `portcullis-verify report`.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Verify an export or a proof file offline (same as portcullis-verify).
    #[command(disable_help_flag = true)]
    Verify {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn serve_config(common: &Common, mut flags: config::FileConfig) -> anyhow::Result<ServeConfig> {
    let file = match &common.config {
        Some(path) => config::read(path)?,
        None => config::FileConfig::default(),
    };
    let store = common.store.clone().or(flags.store.take());
    Ok(config::merge(file, config::FileConfig { data_dir: common.data_dir.clone(), store, ..flags })?)
}

/// Commands that need the ledger open but not the service: the service must be stopped.
fn open_offline(
    config: &ServeConfig,
) -> anyhow::Result<(portcullis::ledger::Ledger, portcullis::ledger::SequencerThread)> {
    if !config.ledger_may_exist() {
        anyhow::bail!("no ledger at {}; run `portcullis serve` first", config.database_path().display());
    }
    let (ledger, thread, _) = portcullis::serve::open_ledger(config)?;
    Ok((ledger, thread))
}

async fn close(ledger: portcullis::ledger::Ledger, thread: portcullis::ledger::SequencerThread) -> anyhow::Result<()> {
    ledger.close().await;
    drop(ledger);
    tokio::task::spawn_blocking(move || thread.join()).await.context("joining the sequencer")
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { common, listen, origin, checkpoint_interval_secs, policy, tokens } => {
            let flags = config::FileConfig {
                data_dir: None,
                listen,
                origin,
                checkpoint_interval_secs,
                policy,
                tokens,
                ..Default::default()
            };
            let config = serve_config(&common, flags)?;
            portcullis::serve::serve(config).await?;
        }
        Command::Migrate { from, to } => {
            let open = |url: &str| {
                portcullis::store::open_url(url).with_context(|| format!("opening {}", portcullis::store::redact(url)))
            };
            let (source, target) = (open(&from)?, open(&to)?);
            let tty = std::io::stderr().is_terminal();
            let progress = move |done: u64, total: u64| {
                if tty {
                    eprint!("\rmigrating {done}/{total} entries");
                }
            };
            let summary = tokio::task::spawn_blocking(move || {
                portcullis::migrate::migrate(source.as_ref(), target.as_ref(), Default::default(), &progress)
            })
            .await
            .context("the migration task")??;
            if tty {
                eprintln!();
            }
            println!(
                "migrated ledger {}: {} entries verified and copied (resumed at {}), checkpoint of size {} verified and written",
                summary.origin, summary.copied, summary.resumed_at, summary.size
            );
        }
        Command::Token { command: TokenCommand::Create { common, sub, groups, tokens } } => {
            let config = serve_config(&common, config::FileConfig { tokens, ..Default::default() })?;
            let path = config.tokens_path();
            let token = portcullis::auth::create(&path, &sub, &groups)?;
            eprintln!("added a token for {sub} ({}) to {}; it is shown only now", groups.join(","), path.display());
            println!("{token}");
        }
        Command::Witness { listen, key, log_keys, state } => {
            let key = keyfile::load(&key)?;
            let mut logs = Vec::new();
            for value in &log_keys {
                let text = if !value.contains('+') && std::path::Path::new(value).is_file() {
                    std::fs::read_to_string(value)?.trim().to_string()
                } else {
                    value.clone()
                };
                let log = portcullis_format::note::VerifierKey::parse(&text)
                    .map_err(|e| anyhow::anyhow!("--log-key {value}: {e}"))?;
                logs.push(log);
            }
            portcullis::witness::serve(listen, key, logs, &state).await?;
        }
        Command::Keygen { name, out } => {
            let key = keyfile::generate(&out, &name)?;
            eprintln!("wrote {} (private, mode 0600) and {}", out.display(), keyfile::public_path(&out).display());
            println!("{}", key.verifier());
        }
        Command::Export { dir, common, from, to } => {
            let config = serve_config(&common, config::FileConfig::default())?;
            if !config.ledger_may_exist() {
                anyhow::bail!("no ledger at {}", config.database_path().display());
            }
            let store = portcullis::serve::open_store(&config)?;
            let tty = std::io::stderr().is_terminal();
            let progress = |done: u64, total: u64| {
                if tty {
                    eprint!("\rexporting {done}/{total} entries");
                }
            };
            let summary = portcullis::export::export(store.as_ref(), &dir, from, to, &progress)?;
            if tty {
                eprintln!();
            }
            println!(
                "exported entries {}..{} (tree size {}) to {}",
                summary.first_entry,
                summary.size,
                summary.size,
                dir.display()
            );
            if summary.not_checkpointed > 0 {
                eprintln!(
                    "note: {} newer entries are not covered by a checkpoint yet and were not exported; \
                     run `portcullis checkpoint` (service stopped) or wait for the service to sign one",
                    summary.not_checkpointed
                );
            }
        }
        Command::Report { command: ReportCommand::Soc2 { from, to, anchor, out, common } } => {
            let config = serve_config(&common, config::FileConfig::default())?;
            let args = portcullis::report::ReportArgs {
                from: portcullis_projections::report::date::parse(&from).context("--from")?,
                to: portcullis_projections::report::date::parse(&to).context("--to")?,
                revoke_sla_ms: portcullis::report::revoke_sla_ms(&config),
                anchor: match &anchor {
                    Some(path) => {
                        Some(std::fs::read_to_string(path).with_context(|| format!("--anchor {}", path.display()))?)
                    }
                    None => None,
                },
            };
            if args.from >= args.to {
                anyhow::bail!("--from {} must be before --to {}", args.from, args.to);
            }
            let signer = keyfile::load(&config.key_path())?;
            let (ledger, thread) = open_offline(&config)?;
            let store = std::sync::Arc::clone(ledger.store());
            let task_args = args.clone();
            let task_out = out.clone();
            let generated = tokio::task::spawn_blocking(move || {
                portcullis::report::generate(store.as_ref(), &signer, &task_args, &task_out)
            })
            .await
            .context("the report task");
            let result = match generated {
                Ok(Ok(generated)) => {
                    let actor = local_actor();
                    let id = portcullis_format::event::EventId::random().context("no system randomness")?;
                    let draft =
                        portcullis::report::generated_event(&generated, &args, &out.display().to_string(), id, &actor);
                    ledger.append(draft).await.map(|receipt| (generated, receipt.seq)).map_err(anyhow::Error::from)
                }
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(e),
            };
            close(ledger, thread).await?;
            let (generated, seq) = result?;
            println!(
                "wrote {}: entries {}..{} against the checkpoint of size {}{}, {} exception(s); manifest sha256 {}",
                generated.dir.display(),
                generated.first_seq,
                generated.end_seq,
                generated.checkpoint_size,
                if generated.period_closed { "" } else { " (the ledger ends inside the period)" },
                generated.exceptions,
                generated.manifest_sha256
            );
            eprintln!("recorded as report.generated at entry {seq}");
        }
        Command::Checkpoint { common } => {
            let config = serve_config(&common, config::FileConfig::default())?;
            let (ledger, thread) = open_offline(&config)?;
            let result = ledger.checkpoint().await;
            close(ledger, thread).await?;
            print!("{}", result?.1);
        }
        Command::Proof { seq, common, out } => {
            let config = serve_config(&common, config::FileConfig::default())?;
            let (ledger, thread) = open_offline(&config)?;
            let result = proof_file(&ledger, seq).await;
            close(ledger, thread).await?;
            let text = result?;
            match out {
                Some(path) => std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
        }
        Command::RotateKey { common } => {
            let config = serve_config(&common, config::FileConfig::default())?;
            let (ledger, thread) = open_offline(&config)?;
            let result = rotate(&config, &ledger).await;
            close(ledger, thread).await?;
            let new_vkey = result?;
            portcullis::serve::promote_next_key(&config)?;
            println!("{new_vkey}");
        }
        Command::Request { client, cluster, namespace, kind, names, access, duration, reason, ticket, break_glass } => {
            let body = serde_json::json!({
                "cluster": cluster, "namespace": namespace, "kind": kind, "names": names, "access": access,
                "duration": duration, "reason": reason, "ticket": ticket, "break_glass": break_glass,
            });
            return client_call(&client, Method::POST, "/v1/requests".into(), Some(body), |v| {
                portcullis::client::request_row(v)
            })
            .await;
        }
        Command::Approve { id, comment, client } => return decide_request(&client, &id, "approve", comment).await,
        Command::Deny { id, comment, client } => return decide_request(&client, &id, "deny", comment).await,
        Command::Cancel { id, client } => {
            return client_call(&client, Method::POST, format!("/v1/requests/{id}/cancel"), None, decision_row).await;
        }
        Command::Requests { status, client } => {
            let path = match status {
                Some(status) => format!("/v1/requests?status={status}&limit=1000"),
                None => "/v1/requests?limit=1000".into(),
            };
            return client_call(&client, Method::GET, path, None, |v| rows(v, portcullis::client::request_row)).await;
        }
        Command::Grants { active, client } => {
            let path = if active { "/v1/grants?active=true&limit=1000" } else { "/v1/grants?limit=1000" };
            return client_call(&client, Method::GET, path.into(), None, |v| rows(v, portcullis::client::grant_row))
                .await;
        }
        Command::End { grant, comment, client } => {
            return grant_call(&client, &grant, "end", serde_json::json!({"comment": comment})).await;
        }
        Command::Kubeconfig { grant, output, client } => return kubeconfig(&client, &grant, output.as_deref()).await,
        Command::Extend { grant, duration, reason, client } => {
            return grant_call(&client, &grant, "extend", serde_json::json!({"duration": duration, "reason": reason}))
                .await;
        }
        Command::Revoke { grant, reason, client } => {
            return grant_call(&client, &grant, "revoke", serde_json::json!({"reason": reason})).await;
        }
        Command::Access { cluster, namespace, kind, name, at, client } => {
            let mut path = format!("/v1/access?cluster={cluster}&namespace={namespace}&kind={kind}");
            if let Some(name) = name {
                path.push_str(&format!("&name={name}"));
            }
            if let Some(at) = at {
                path.push_str(&format!("&at={at}"));
            }
            return client_call(&client, Method::GET, path, None, |v| {
                let grants = v["grants"].as_array().cloned().unwrap_or_default();
                if grants.is_empty() {
                    return format!("nobody had access at {}", v["at"].as_str().unwrap_or(""));
                }
                grants
                    .iter()
                    .map(|g| {
                        format!(
                            "{}  {}  {} until {}",
                            g["grant_id"].as_str().unwrap_or(""),
                            g["requester"].as_str().unwrap_or(""),
                            g["access"].as_str().unwrap_or(""),
                            g["expires_at"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .await;
        }
        Command::Watch { cursor, client } => {
            let result = async {
                let api = portcullis::client::Client::resolve(client.server.clone(), client.token.clone())?;
                api.watch(cursor, |id, kind, data| {
                    if client.json {
                        println!("{data}");
                    } else {
                        let event: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                        println!(
                            "{id:>8}  {}  {:<28} {}",
                            event["ts"].as_str().unwrap_or(""),
                            kind,
                            event["actor"]["sub"].as_str().unwrap_or("")
                        );
                    }
                })
                .await
            }
            .await;
            if let Err(e) = result {
                eprintln!("portcullis: {e}");
                return Ok(ExitCode::from(e.exit_code()));
            }
        }
        Command::Whoami { client } => {
            return client_call(&client, Method::GET, "/v1/whoami".into(), None, |v| {
                let groups: Vec<&str> =
                    v["groups"].as_array().map(|g| g.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                format!("{} (groups: {}; admin: {})", v["sub"].as_str().unwrap_or(""), groups.join(", "), v["admin"])
            })
            .await;
        }
        Command::Verify { args } => {
            let code = portcullis_verify::run(&args, &mut std::io::stdout(), &mut std::io::stderr());
            return Ok(ExitCode::from(code as u8));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one client call: prints a table row (or the JSON with `--json`) and
/// maps failures to the documented exit codes.
async fn client_call(
    args: &ClientArgs,
    method: Method,
    path: String,
    body: Option<Value>,
    human: impl Fn(&Value) -> String,
) -> anyhow::Result<ExitCode> {
    let result = async {
        let client = portcullis::client::Client::resolve(args.server.clone(), args.token.clone())?;
        client.call(method, &path, body).await
    }
    .await;
    match result {
        Ok(value) if args.json => println!("{value}"),
        Ok(value) => println!("{}", human(&value)),
        Err(e) => {
            eprintln!("portcullis: {e}");
            return Ok(ExitCode::from(e.exit_code()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `approve` or `deny` a request, with an optional comment.
async fn decide_request(
    client: &ClientArgs,
    id: &str,
    verb: &str,
    comment: Option<String>,
) -> anyhow::Result<ExitCode> {
    let body = serde_json::json!({ "comment": comment });
    client_call(client, Method::POST, format!("/v1/requests/{id}/{verb}"), Some(body), decision_row).await
}

/// `end`, `extend` or `revoke` a grant with a JSON body; prints the grant.
async fn grant_call(client: &ClientArgs, grant: &str, verb: &str, body: Value) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/grants/{grant}/{verb}");
    client_call(client, Method::POST, path, Some(body), portcullis::client::grant_row).await
}

/// Takes a grant's one-time kubeconfig. The output file is created first (so
/// a credential handed out once is never lost to an unwritable path).
async fn kubeconfig(args: &ClientArgs, grant: &str, output: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = match output {
        Some(path) => match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(file) => Some(file),
            Err(e) => {
                eprintln!("portcullis: cannot create {}: {e} (it must not exist yet)", path.display());
                return Ok(ExitCode::from(2));
            }
        },
        None => None,
    };
    let result = async {
        let client = portcullis::client::Client::resolve(args.server.clone(), args.token.clone())?;
        client.call(Method::POST, &format!("/v1/grants/{grant}/kubeconfig"), None).await
    }
    .await;
    let value = match result {
        Ok(value) => value,
        Err(e) => {
            if let Some(path) = output {
                let _ = std::fs::remove_file(path);
            }
            eprintln!("portcullis: {e}");
            return Ok(ExitCode::from(e.exit_code()));
        }
    };
    let text = value["kubeconfig"].as_str().unwrap_or_default();
    match (&mut file, output) {
        (Some(file), Some(path)) => {
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            let expires = value["expires_at"].as_str().unwrap_or("?");
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"path": path, "expires_at": expires, "service_account": value["service_account"]})
                );
            } else {
                println!(
                    "kubeconfig written to {} (token expires {expires}); use: KUBECONFIG={} kubectl ...",
                    path.display(),
                    path.display()
                );
            }
        }
        _ if args.json => println!("{value}"),
        _ => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn rows(page: &Value, row: fn(&Value) -> String) -> String {
    let items = page["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return "(none)".into();
    }
    items.iter().map(row).collect::<Vec<_>>().join("\n")
}

fn decision_row(value: &Value) -> String {
    let mut out = portcullis::client::request_row(&value["request"]);
    if value["grant"].is_object() {
        out.push('\n');
        out.push_str(&portcullis::client::grant_row(&value["grant"]));
    }
    out
}

async fn proof_file(ledger: &portcullis::ledger::Ledger, seq: u64) -> anyhow::Result<String> {
    let (size, note) = ledger.checkpoint().await?;
    if seq >= size {
        anyhow::bail!("entry {seq} does not exist; the ledger holds {size} entries");
    }
    let store = ledger.store();
    let entry = store.entries(seq, 1)?.pop().context("entry missing from the store")?;
    let proof = portcullis_format::merkle::inclusion_proof(&portcullis::store::NodeReader(store.as_ref()), seq, size)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let file = portcullis_format::proof_file::ProofFile {
        extra: Some(entry),
        index: seq,
        proof,
        checkpoint: note.into_bytes(),
    };
    Ok(file.encode())
}

async fn rotate(config: &ServeConfig, ledger: &portcullis::ledger::Ledger) -> anyhow::Result<String> {
    let next = portcullis::serve::next_key_path(config);
    let new_key = keyfile::generate(&next, ledger.origin()).with_context(|| {
        format!("writing the new key to {} (remove it if a previous rotation did not start)", next.display())
    })?;
    let vkey = new_key.verifier().to_string();
    let receipt = ledger.rotate_key(new_key, local_actor()).await?;
    eprintln!("key rotated at entry {}; the new key signs from entry {}", receipt.seq, receipt.seq + 1);
    Ok(vkey)
}

/// The actor of commands run on the server itself: the local user.
fn local_actor() -> portcullis_format::event::Actor {
    let user =
        std::env::var("USER").ok().filter(|u| !u.is_empty() && u.len() < 200).unwrap_or_else(|| "unknown".into());
    portcullis_format::event::Actor { sub: format!("local:{user}"), groups: Vec::new(), via: "local".into() }
}

/// The error and its causes, skipping a cause whose text the message already includes.
fn error_chain(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).init();
    // The KurrentDB client brings rustls's aws-lc provider next to the ring one every
    // other TLS client here uses; with two, rustls needs to be told which one serves.
    #[cfg(feature = "kurrentdb")]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

//! The workflow service: runs commands through the pure domain core and the
//! ledger, keeps the state current from the ledger, and expires requests and
//! grants on time.
//!
//! Commands are decided one at a time against the latest state (a mutex
//! around decide + append), so two approvers approving at the same moment, an
//! approval racing a cancel, or an extension racing an expiry each have
//! exactly one outcome: the second command is decided on the state the first
//! one left, and is refused if it no longer applies.
//!
//! The state is folded from the ledger itself (the entries read back from the
//! store), so it is exactly what the ledger says, including events written by
//! other parts of the service, and it is rebuilt from entry 0 at start.

use crate::domain::decide::{Command, Context, Rejection, decide};
use crate::domain::events::{Payload, PolicyLoaded};
use crate::domain::state::{Due, State};
use crate::ledger::{AppendError, Ledger, Receipt};
use crate::policy::Policy;
use portcullis_format::event::{Actor, ParsedEntry};
use portcullis_format::time::Timestamp;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, RwLock, RwLockReadGuard};

/// The proposer recorded when the configured policy file differs from the policy in force.
pub const CONFIG_PROPOSER: &str = "system:policy-file";

/// How many times a command is decided again after another replica appended
/// under it (see [`Workflow::execute`]).
pub const MAX_DECISIONS: u32 = 32;

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("reading the ledger: {0}")]
    Read(String),
}

pub struct Workflow {
    ledger: Ledger,
    /// Shared so that a command's append can own the guard (see [`Workflow::execute`]).
    /// Readers share it; commands (and catching up) take it exclusively.
    state: Arc<RwLock<State>>,
    policy: std::sync::RwLock<Option<Arc<Policy>>>,
    /// Woken after every command, so the scheduler re-plans its next deadline.
    changed: Notify,
    /// The time commands are decided at (the system clock, except in tests).
    clock: Clock,
}

/// A source of the current time.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

impl Workflow {
    /// Builds the state from the whole ledger.
    ///
    /// # Errors
    /// [`WorkflowError::Read`] when the store cannot be read.
    pub async fn open(ledger: Ledger, policy: Option<Arc<Policy>>) -> Result<Arc<Workflow>, WorkflowError> {
        Workflow::open_with_clock(ledger, policy, Arc::new(Timestamp::now)).await
    }

    /// As [`Workflow::open`], deciding at the times `clock` gives.
    ///
    /// # Errors
    /// As [`Workflow::open`].
    pub async fn open_with_clock(
        ledger: Ledger,
        policy: Option<Arc<Policy>>,
        clock: Clock,
    ) -> Result<Arc<Workflow>, WorkflowError> {
        let workflow = Arc::new(Workflow {
            ledger,
            state: Arc::new(RwLock::new(State::default())),
            policy: std::sync::RwLock::new(None),
            changed: Notify::new(),
            clock,
        });
        let (recorded, proposed) = {
            let state = workflow.current().await?;
            (state.policy.as_ref().map(|(hash, _)| hash.clone()), state.proposals.keys().cloned().collect::<Vec<_>>())
        };
        if let Some(configured) = policy {
            let hash = configured.hash_hex();
            match recorded {
                // The ledger's first policy: loaded as configured, recorded whole.
                None => {
                    let loaded = Payload::PolicyLoaded(PolicyLoaded {
                        policy_hash: hash,
                        text: configured.text().to_string(),
                        proposed_by: None,
                        approved_by: None,
                    });
                    let id = portcullis_format::event::EventId(random_seed());
                    workflow.ledger.append(loaded.to_draft(id, &Actor::system())).await?;
                }
                // A changed file is only a proposal: the policy in force stays until a second admin approves.
                Some(recorded) if recorded != hash && !proposed.contains(&hash) => {
                    let proposer = Actor { sub: CONFIG_PROPOSER.into(), groups: Vec::new(), via: "system".into() };
                    let command = Command::ProposePolicy { text: configured.text().to_string() };
                    workflow.execute(command, proposer, random_seed()).await?;
                }
                Some(_) => {}
            }
        }
        drop(workflow.current().await?);
        Ok(workflow)
    }

    /// The policy in force.
    pub fn policy(&self) -> Option<Arc<Policy>> {
        self.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps the parsed policy in step with the one the ledger says is in force.
    fn sync_policy(&self, state: &State) {
        let current = self.policy();
        let wanted = state.policy.as_ref();
        if current.as_ref().map(|p| p.hash_hex()) == wanted.map(|(hash, _)| hash.clone()) {
            return;
        }
        let parsed = wanted.map(|(_, text)| Policy::parse(text));
        let next = match parsed {
            None => None,
            Some(Ok(policy)) => Some(Arc::new(policy)),
            Some(Err(e)) => {
                tracing::error!("the policy recorded in the ledger does not parse: {e}");
                return;
            }
        };
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The state, caught up with everything durable in the ledger.
    ///
    /// # Errors
    /// [`WorkflowError::Read`] when the store cannot be read.
    pub async fn current(&self) -> Result<RwLockReadGuard<'_, State>, WorkflowError> {
        {
            let state = self.state.read().await;
            if state.size >= self.ledger.head().size {
                return Ok(state);
            }
        }
        self.current_from_store().await
    }

    /// The state, caught up with everything the ledger store holds, what other
    /// replicas appended since this one last looked included (one read of the
    /// store's size): for a read that must not miss an entry another replica
    /// has acknowledged, such as a look-up by id that found nothing.
    ///
    /// # Errors
    /// [`WorkflowError::Read`] when the store cannot be read.
    pub async fn current_from_store(&self) -> Result<RwLockReadGuard<'_, State>, WorkflowError> {
        let mut state = self.state.write().await;
        self.catch_up(&mut state).await?;
        Ok(state.downgrade())
    }

    /// Folds every durable entry the state has not seen yet.
    async fn catch_up(&self, state: &mut State) -> Result<(), WorkflowError> {
        // Replicas on one store: what another replica committed counts too.
        let head = self.ledger.refresh_head().await.map_err(|e| WorkflowError::Read(e.to_string()))?.size;
        while state.size < head {
            let from = state.size;
            let entries = self.ledger.entries(from, 4096).await.map_err(|e| WorkflowError::Read(e.to_string()))?;
            if entries.is_empty() {
                return Err(WorkflowError::Read(format!("entry {from} is missing")));
            }
            for entry in entries {
                let parsed = ParsedEntry::parse(&entry)
                    .map_err(|e| WorkflowError::Read(format!("entry {}: {e}", state.size)))?;
                let taken = std::mem::take(state);
                *state = taken.evolve(&parsed.event);
            }
        }
        self.sync_policy(state);
        Ok(())
    }

    /// Decides `command` for `actor` and appends its events durably.
    ///
    /// On a store several replicas share, the events are appended only if
    /// no other replica appended since the state they were decided on (else
    /// the command is decided again on the new state, at most
    /// [`MAX_DECISIONS`] more times): two replicas approving one request at
    /// once give one grant, and the second approval is refused as the
    /// single replica would refuse it.
    ///
    /// The lock is held from the decision until the append is durable, and
    /// that part runs on a task of its own: if the caller is dropped (an HTTP
    /// client that hangs up), the append already sent to the ledger still
    /// completes before the next command is decided, so that command never
    /// decides on a state that misses it (two grants for one request).
    ///
    /// # Errors
    /// [`WorkflowError::Rejected`] with nothing recorded, or a ledger failure.
    pub async fn execute(&self, command: Command, actor: Actor, seed: [u8; 16]) -> Result<Vec<Receipt>, WorkflowError> {
        let mut attempts = 0;
        let receipts = loop {
            let mut state = Arc::clone(&self.state).write_owned().await;
            self.catch_up(&mut state).await?;
            let ctx = Context { actor: actor.clone(), now: (self.clock)(), seed };
            let drafts = decide(&state, self.policy().as_deref(), command.clone(), &ctx)?;
            // Appended only if no other replica appended since the state decided on.
            let decided_at = state.size;
            let ledger = self.ledger.clone();
            let append = tokio::spawn(async move {
                let receipts = ledger.append_all_after(drafts, decided_at).await;
                // Released only once the append is durable (or failed), whatever became of the caller.
                drop(state);
                receipts
            });
            match append.await.map_err(|e| WorkflowError::Read(e.to_string()))? {
                // Another replica's entries may change the decision: decide again on them.
                Err(AppendError::Stale { .. }) if attempts < MAX_DECISIONS => attempts += 1,
                result => break result?,
            }
        };
        // Fold what was just appended, so the caller's next read sees it.
        drop(self.current().await?);
        self.changed.notify_one();
        Ok(receipts)
    }

    /// Expires pending requests and grants exactly at their deadlines: sleeps
    /// until the earliest one (or until a command changes the plan), then
    /// expires everything due. Whatever expired while the service was down is
    /// due at once. Runs until the ledger closes.
    pub async fn run_scheduler(self: Arc<Self>) {
        let mut backoff = Duration::ZERO;
        loop {
            let plan = match self.current().await {
                Ok(state) => plan(&state, (self.clock)()),
                Err(e) => {
                    tracing::warn!("expiry scheduler: {e}");
                    Plan { due: Vec::new(), wait: Duration::from_secs(1) }
                }
            };
            let mut failed = false;
            for command in plan.due {
                match self.execute(command, Actor::system(), random_seed()).await {
                    Ok(_) | Err(WorkflowError::Rejected(_)) => {}
                    Err(WorkflowError::Append(AppendError::Closed)) => return,
                    Err(e) => {
                        tracing::warn!("expiry scheduler: {e}");
                        failed = true;
                    }
                }
            }
            // A failing store must not turn the loop into a busy one: back off, up to 30 s.
            backoff = if failed {
                (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(30))
            } else {
                Duration::ZERO
            };
            tokio::select! {
                () = tokio::time::sleep(plan.wait.max(backoff)) => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

/// What the scheduler does now, and how long it then sleeps.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub due: Vec<Command>,
    pub wait: Duration,
}

/// The expirations due at `now`, and the time until the next deadline after
/// them (an hour when there is none: a command wakes the scheduler anyway).
pub fn plan(state: &State, now: Timestamp) -> Plan {
    let due = state
        .due(now)
        .into_iter()
        .map(|due| match due {
            Due::Request(request) => Command::ExpireRequest { request },
            Due::Grant(grant) => Command::ExpireGrant { grant },
        })
        .collect();
    let upcoming = state.next_deadline_after(now);
    let wait = upcoming.map_or(Duration::from_secs(3600), |deadline| {
        Duration::from_micros((deadline.unix_micros() - now.unix_micros()).max(0) as u64)
    });
    Plan { due, wait }
}

/// A fresh random seed for the ids of a command's events.
pub fn random_seed() -> [u8; 16] {
    portcullis_format::event::EventId::random().map(|id| id.0).unwrap_or_else(|_| {
        // No system randomness: fall back to the clock, still unique per call in practice.
        let mut seed = [0u8; 16];
        seed[..8].copy_from_slice(&Timestamp::now().unix_micros().to_be_bytes());
        seed
    })
}

//! The ledger's own bookkeeping: the keys announced in force and the events
//! by kind.

use portcullis_format::event::{Event, KIND_KEY_ROTATED, KIND_LEDGER_CREATED};
use portcullis_format::json::Json;
use portcullis_format::time::Timestamp;
use std::collections::BTreeMap;

/// What the ledger says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerStats {
    /// Events folded so far (the next expected `seq`).
    pub size: u64,
    /// Events by kind.
    pub kinds: BTreeMap<String, u64>,
    /// The keys of the log in order, with the first `seq` each signs, as
    /// announced by `ledger.created` and `key.rotated` events.
    pub keys: Vec<(u64, String)>,
    pub first_ts: Option<Timestamp>,
    pub last_ts: Option<Timestamp>,
}

impl LedgerStats {
    /// Applies one event. Events must come in ledger order; the sequencer and
    /// the verifier guarantee it, so an out-of-order event is ignored here
    /// rather than corrupting the fold.
    #[must_use]
    pub fn evolve(mut self, event: &Event) -> LedgerStats {
        if event.seq != self.size {
            return self;
        }
        self.size += 1;
        *self.kinds.entry(event.draft.kind.clone()).or_default() += 1;
        self.first_ts.get_or_insert(event.ts);
        self.last_ts = Some(event.ts);
        let announced = match event.draft.kind.as_str() {
            KIND_LEDGER_CREATED => event.draft.data.get("key").and_then(Json::as_str).map(|k| (event.seq, k)),
            KIND_KEY_ROTATED => event.draft.data.get("new_key").and_then(Json::as_str).map(|k| (event.seq + 1, k)),
            _ => None,
        };
        if let Some((from, key)) = announced {
            self.keys.push((from, key.to_string()));
        }
        self
    }

    /// Rebuilds the projection from a sequence of events starting at entry 0.
    pub fn rebuild<'a>(events: impl IntoIterator<Item = &'a Event>) -> LedgerStats {
        events.into_iter().fold(LedgerStats::default(), LedgerStats::evolve)
    }

    /// The key announced as in force at `seq`.
    pub fn key_at(&self, seq: u64) -> Option<&str> {
        self.keys.iter().rev().find(|(from, _)| *from <= seq).map(|(_, k)| k.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_format::event::{Actor, EventDraft, EventId};
    use proptest::prelude::*;

    fn event(seq: u64, kind: &str, data: Json) -> Event {
        Event {
            log: "portcullis.test/projections".into(),
            seq,
            prev: [0u8; 32],
            ts: Timestamp::from_unix_micros(1_800_000_000_000_000 + seq as i64 * 1000).unwrap(),
            draft: EventDraft { id: EventId([seq as u8; 16]), kind: kind.into(), v: 1, actor: Actor::system(), data },
        }
    }

    fn events(kinds: &[u8]) -> Vec<Event> {
        kinds
            .iter()
            .enumerate()
            .map(|(seq, k)| {
                let seq = seq as u64;
                match (seq, k % 4) {
                    (0, _) => event(0, KIND_LEDGER_CREATED, Json::Obj(vec![("key".into(), Json::Str("k0".into()))])),
                    (_, 0) => {
                        event(seq, KIND_KEY_ROTATED, Json::Obj(vec![("new_key".into(), Json::Str(format!("k{seq}")))]))
                    }
                    (_, 1) => event(seq, "request.created", Json::Obj(vec![])),
                    (_, 2) => event(seq, "grant.activated", Json::Obj(vec![])),
                    _ => event(seq, "grant.expired", Json::Obj(vec![])),
                }
            })
            .collect()
    }

    #[test]
    fn a_rotation_moves_the_key_in_force_to_the_next_entry() {
        let stats = LedgerStats::rebuild(&events(&[1, 1, 0, 1]));
        assert_eq!(stats.key_at(2), Some("k0"));
        assert_eq!(stats.key_at(3), Some("k2"));
        assert_eq!(stats.kinds[KIND_KEY_ROTATED], 1);
        assert_eq!(stats.size, 4);
    }

    proptest! {
        #[test]
        fn replay_from_any_prefix_equals_full_replay(kinds in proptest::collection::vec(any::<u8>(), 1..60), cut in any::<prop::sample::Index>()) {
            let all = events(&kinds);
            let cut = cut.index(all.len() + 1);
            let prefix = LedgerStats::rebuild(&all[..cut]);
            let resumed = all[cut..].iter().fold(prefix, LedgerStats::evolve);
            prop_assert_eq!(resumed, LedgerStats::rebuild(&all));
        }
    }
}

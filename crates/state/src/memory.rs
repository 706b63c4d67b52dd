use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Instant;

use async_trait::async_trait;
use cascade_core::config::Configuration;

use cascade_core::report::ReportCell;

use crate::{
    BillingNotice, Event, EventCounter, EventRecorded, Selection, StateError, Store,
    now_unix_seconds,
};

/// The embedded store: the whole state in this process's memory. Several services in
/// one process (`cascade up`) share one instance and so see each other's writes.
#[derive(Debug)]
pub struct MemoryStore {
    configuration: Mutex<Configuration>,
    changes: tokio::sync::watch::Sender<u64>,
    selections: Mutex<HashMap<String, (Selection, Instant)>>,
    /// Decisions' answers for their retries, with their expiry.
    answers: Mutex<HashMap<crate::AnswerKey, (Vec<u8>, Instant)>>,
    events: Mutex<Events>,
    report: Mutex<Report>,
    /// Billing notices by selection id, with when each is next due (unix ms).
    billing: Mutex<HashMap<String, (BillingNotice, i64)>>,
}

#[derive(Debug, Default)]
struct Report {
    counts: HashMap<ReportCell, u64>,
    /// (day, network) -> micros.
    reported: HashMap<(String, String), i64>,
}

#[derive(Debug, Default)]
struct Events {
    /// (selection id, event kind) already recorded -> its detail.
    seen: HashMap<(String, crate::EventKind), String>,
    counters: HashMap<EventCounter, u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            configuration: Mutex::default(),
            changes: tokio::sync::watch::Sender::new(0),
            selections: Mutex::default(),
            answers: Mutex::default(),
            events: Mutex::default(),
            report: Mutex::default(),
            billing: Mutex::default(),
        }
    }
}

/// The memory store drops expired selections once this many are held.
const SELECTION_SWEEP_THRESHOLD: usize = 100_000;

impl MemoryStore {
    /// A store holding `configuration` (validated) at version 1.
    pub fn with_configuration(mut configuration: Configuration) -> Result<Self, StateError> {
        configuration.validate()?;
        configuration.version = 1;
        Ok(Self {
            configuration: Mutex::new(configuration),
            changes: tokio::sync::watch::Sender::new(1),
            selections: Mutex::default(),
            answers: Mutex::default(),
            events: Mutex::default(),
            report: Mutex::default(),
            billing: Mutex::default(),
        })
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn configuration(&self) -> Result<Configuration, StateError> {
        Ok(self.configuration.lock().clone())
    }

    async fn configuration_version(&self) -> Result<u64, StateError> {
        Ok(self.configuration.lock().version)
    }

    async fn apply_configuration(
        &self,
        mut configuration: Configuration,
        expected_version: Option<u64>,
    ) -> Result<u64, StateError> {
        configuration.validate()?;
        let mut current = self.configuration.lock();
        if let Some(expected) = expected_version
            && expected != current.version
        {
            return Err(StateError::VersionConflict {
                expected,
                actual: current.version,
            });
        }
        configuration.version = current.version + 1;
        *current = configuration;
        self.changes.send_replace(current.version);
        Ok(current.version)
    }

    async fn put_selections(&self, selections: &[Selection]) -> Result<Vec<bool>, StateError> {
        let now = Instant::now();
        let mut stored = self.selections.lock();
        if stored.len() >= SELECTION_SWEEP_THRESHOLD {
            stored.retain(|_, (_, expires_at)| *expires_at > now);
        }
        let mut answers = self.answers.lock();
        if answers.len() >= SELECTION_SWEEP_THRESHOLD {
            answers.retain(|_, (_, expires_at)| *expires_at > now);
        }
        for selection in selections {
            let mut selection = selection.clone();
            if let Some(answer) = selection.answer.take() {
                answers.insert(answer.key, (answer.response, now + selection.ttl));
            }
            stored.insert(
                selection.id.clone(),
                (selection.clone(), now + selection.ttl),
            );
        }
        Ok(vec![true; selections.len()])
    }

    async fn recall(
        &self,
        answer: &crate::AnswerKey,
        ids: &[String],
    ) -> Result<(Option<Vec<u8>>, Vec<Option<Selection>>), StateError> {
        let stored = self
            .answers
            .lock()
            .get(answer)
            .filter(|(_, expires_at)| *expires_at > Instant::now())
            .map(|(response, _)| response.clone());
        Ok((stored, self.get_selections(ids).await?))
    }

    async fn get_selections(&self, ids: &[String]) -> Result<Vec<Option<Selection>>, StateError> {
        let now = Instant::now();
        let stored = self.selections.lock();
        let events = self.events.lock();
        Ok(ids
            .iter()
            .map(|id| {
                stored
                    .get(id)
                    .filter(|(_, expires_at)| *expires_at > now)
                    .map(|(selection, _)| Selection {
                        node_outcome: events
                            .seen
                            .get(&(id.clone(), crate::EventKind::NodeResult))
                            .cloned(),
                        ..selection.clone()
                    })
            })
            .collect())
    }

    async fn record_event(&self, event: &Event) -> Result<EventRecorded, StateError> {
        let selection = {
            let stored = self.selections.lock();
            match stored.get(&event.selection_id) {
                Some((selection, expires_at)) if *expires_at > Instant::now() => selection.clone(),
                _ => return Ok(EventRecorded::UnknownSelection),
            }
        };
        let mut events = self.events.lock();
        let key = (event.selection_id.clone(), event.kind);
        if events.seen.contains_key(&key) {
            return Ok(EventRecorded::Duplicate);
        }
        events.seen.insert(key, event.detail.clone());
        let demand = if selection.network_id.is_empty() {
            selection.seat.clone()
        } else {
            selection.network_id.clone()
        };
        let counter = EventCounter {
            account_id: selection.account_id.clone(),
            source: selection.source,
            demand,
            kind: event.kind,
            detail: event.detail.clone(),
        };
        *events.counters.entry(counter).or_default() += 1;
        drop(events);
        if event.kind == crate::EventKind::Impression
            && !selection.test
            && !selection.burl.is_empty()
        {
            let now = crate::now_unix_millis();
            if selection.burl_expires_at_ms > now {
                let notice = BillingNotice {
                    id: selection.id.clone(),
                    url: selection.burl.clone(),
                    attempts: 0,
                    expires_at_ms: selection.burl_expires_at_ms,
                };
                self.billing
                    .lock()
                    .insert(selection.id.clone(), (notice, now));
            }
        }
        if event.kind == crate::EventKind::Impression
            && let Some(cells) = crate::impression_cells(&selection, now_unix_seconds())
        {
            let mut report = self.report.lock();
            for (cell, count) in cells {
                *report.counts.entry(cell).or_default() += count;
            }
        }
        Ok(EventRecorded::New(Box::new(selection)))
    }

    async fn claim_billing_notices(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<BillingNotice>, StateError> {
        let mut billing = self.billing.lock();
        let mut claimed = Vec::new();
        for (notice, due) in billing.values_mut() {
            if claimed.len() == limit {
                break;
            }
            if *due <= now_ms {
                *due = lease_until_ms;
                claimed.push(notice.clone());
            }
        }
        Ok(claimed)
    }

    async fn settle_billing_notice(
        &self,
        notice: &BillingNotice,
        retry_at_ms: Option<i64>,
    ) -> Result<(), StateError> {
        let mut billing = self.billing.lock();
        match retry_at_ms {
            Some(due) => {
                billing.insert(notice.id.clone(), (notice.clone(), due));
            }
            None => {
                billing.remove(&notice.id);
            }
        }
        Ok(())
    }

    fn configuration_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn add_report_counts(&self, counts: &[(ReportCell, u64)]) -> Result<(), StateError> {
        let mut report = self.report.lock();
        for (cell, count) in counts {
            *report.counts.entry(cell.clone()).or_default() += count;
        }
        Ok(())
    }

    async fn report_counts(&self, days: &[String]) -> Result<Vec<(ReportCell, u64)>, StateError> {
        let report = self.report.lock();
        Ok(report
            .counts
            .iter()
            .filter(|(cell, _)| days.contains(&cell.day))
            .map(|(cell, count)| (cell.clone(), *count))
            .collect())
    }

    async fn put_reported_revenue(
        &self,
        day: &str,
        network_id: &str,
        revenue_micros: i64,
    ) -> Result<(), StateError> {
        self.report
            .lock()
            .reported
            .insert((day.to_string(), network_id.to_string()), revenue_micros);
        Ok(())
    }

    async fn reported_revenue(
        &self,
        days: &[String],
    ) -> Result<Vec<(String, String, i64)>, StateError> {
        let report = self.report.lock();
        Ok(report
            .reported
            .iter()
            .filter(|((day, _), _)| days.contains(day))
            .map(|((day, network), micros)| (day.clone(), network.clone(), *micros))
            .collect())
    }

    async fn event_counters(&self) -> Result<Vec<(EventCounter, u64)>, StateError> {
        let events = self.events.lock();
        let mut counters: Vec<_> = events
            .counters
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        counters.sort();
        Ok(counters)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cascade_core::config::Account;

    use super::*;

    fn configuration(account: &str) -> Configuration {
        Configuration {
            accounts: vec![Account {
                id: account.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn apply_bumps_the_version_and_checks_the_expected_one() {
        let store = MemoryStore::with_configuration(configuration("a")).unwrap();
        assert_eq!(store.configuration_version().await.unwrap(), 1);
        assert_eq!(
            store
                .apply_configuration(configuration("b"), Some(1))
                .await
                .unwrap(),
            2
        );
        let conflict = store.apply_configuration(configuration("c"), Some(1)).await;
        assert!(matches!(
            conflict,
            Err(StateError::VersionConflict {
                expected: 1,
                actual: 2
            })
        ));
        assert_eq!(store.configuration().await.unwrap().accounts[0].id, "b");
    }

    #[tokio::test]
    async fn an_invalid_apply_changes_nothing() {
        let store = MemoryStore::with_configuration(configuration("a")).unwrap();
        let invalid = configuration("");
        assert!(matches!(
            store.apply_configuration(invalid, None).await,
            Err(StateError::InvalidConfiguration(_))
        ));
        assert_eq!(store.configuration_version().await.unwrap(), 1);
        assert_eq!(store.configuration().await.unwrap().accounts[0].id, "a");
    }

    #[tokio::test]
    async fn selections_expire() {
        let store = MemoryStore::default();
        let selection = |id: &str, ttl| Selection {
            id: id.into(),
            request_id: "r".into(),
            impid: "1".into(),
            account_id: "a".into(),
            source: cascade_core::auction::DemandKind::Exchange,
            network_id: String::new(),
            seat: "s".into(),
            bid_id: "b".into(),
            price_micros: 1,
            ttl,
            ..Default::default()
        };
        store
            .put_selections(&[
                selection("keep", Duration::from_secs(60)),
                selection("gone", Duration::ZERO),
            ])
            .await
            .unwrap();
        let found = store
            .get_selections(&["keep".into(), "gone".into(), "never".into()])
            .await
            .unwrap();
        assert_eq!(found[0].as_ref().unwrap().id, "keep");
        assert!(found[1].is_none());
        assert!(found[2].is_none());

        let event = |id: &str| Event {
            selection_id: id.into(),
            kind: crate::EventKind::Impression,
            detail: String::new(),
        };
        assert!(matches!(
            store.record_event(&event("keep")).await.unwrap(),
            EventRecorded::New(_)
        ));
        assert_eq!(
            store.record_event(&event("keep")).await.unwrap(),
            EventRecorded::Duplicate
        );
        assert_eq!(
            store.record_event(&event("gone")).await.unwrap(),
            EventRecorded::UnknownSelection
        );
        let counters = store.event_counters().await.unwrap();
        assert_eq!(counters.len(), 1);
        assert_eq!((counters[0].0.demand.as_str(), counters[0].1), ("s", 1));
    }
}

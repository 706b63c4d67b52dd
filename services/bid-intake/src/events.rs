//! Event reports: impressions, clicks and client-side node results, recorded once per
//! selection and event type, and acknowledged only once stored.

use cascade_core::report::node_result_counts;
use cascade_proto::decision::v1::{
    AttemptOutcome, EventType, ReportEventRequest, ReportEventResponse,
};
use std::time::Duration;

use cascade_state::{
    Event, EventKind, EventRecorded, ReportRecorder, Selection, SelectionWriter, StateError, Store,
};

use cascade_log::DecisionLog;
use cascade_log::schema::{self, LogEntry};

use crate::error::DecideError;
use crate::normalize::MAX_ID_LEN;

/// Longest an event for a selection sold here waits for it to leave the backlog.
const WAIT_FOR_SELECTION: Duration = Duration::from_secs(1);

pub async fn report_event(
    store: &dyn Store,
    selections: &SelectionWriter,
    report: &ReportRecorder,
    log: &DecisionLog,
    request: ReportEventRequest,
) -> Result<ReportEventResponse, DecideError> {
    if request.selection_id.is_empty() || request.selection_id.len() > MAX_ID_LEN {
        return Err(DecideError::invalid(
            "selection_id",
            format!("required, at most {MAX_ID_LEN} characters"),
        ));
    }
    let (kind, detail) = match request.r#type() {
        EventType::Impression => (EventKind::Impression, ""),
        EventType::Click => (EventKind::Click, ""),
        EventType::NodeResult => {
            let outcome = match request.node_outcome() {
                AttemptOutcome::Filled => "filled",
                AttemptOutcome::NoFill => "no_fill",
                AttemptOutcome::Timeout => "timeout",
                AttemptOutcome::Error => "error",
                AttemptOutcome::Skipped => "skipped",
                AttemptOutcome::Unspecified => {
                    return Err(DecideError::invalid(
                        "node_outcome",
                        "required for EVENT_TYPE_NODE_RESULT",
                    ));
                }
            };
            (EventKind::NodeResult, outcome)
        }
        EventType::Unspecified => {
            return Err(DecideError::invalid(
                "type",
                "required: EVENT_TYPE_IMPRESSION, EVENT_TYPE_CLICK or EVENT_TYPE_NODE_RESULT",
            ));
        }
    };
    let event = Event {
        selection_id: request.selection_id.clone(),
        kind,
        detail: detail.to_string(),
    };
    let mut recorded = store.record_event(&event).await?;
    if recorded == EventRecorded::UnknownSelection
        && selections.waiting(std::slice::from_ref(&event.selection_id))[0].is_some()
    {
        // Sold here, still on its way to the store: the event waits for it.
        if !selections
            .stored(&event.selection_id, WAIT_FOR_SELECTION)
            .await
        {
            return Err(StateError::NotYetStored {
                id: event.selection_id,
            }
            .into());
        }
        recorded = store.record_event(&event).await?;
    }
    match recorded {
        EventRecorded::New(selection) => {
            if event.kind == EventKind::NodeResult {
                count_node_result(report, &selection, &event.detail, request.node_latency_ms);
            }
            if log.enabled() {
                log.append(event_entry(
                    &event,
                    Some(&selection),
                    false,
                    request.node_latency_ms,
                ));
            }
            Ok(ReportEventResponse { duplicate: false })
        }
        EventRecorded::Duplicate => {
            if log.enabled() {
                log.append(event_entry(&event, None, true, request.node_latency_ms));
            }
            Ok(ReportEventResponse { duplicate: true })
        }
        EventRecorded::UnknownSelection => Err(DecideError::NotFound {
            field: "selection_id".into(),
            message: format!("no selection {:?} (unknown or expired)", event.selection_id),
        }),
    }
}

/// The log's entry of an event: what it was about, from its selection (a repeat, which
/// counted nothing, names only the selection).
fn event_entry(
    event: &Event,
    selection: Option<&Selection>,
    duplicate: bool,
    node_latency_ms: u32,
) -> LogEntry {
    let node_result = event.kind == EventKind::NodeResult;
    let mut logged = schema::Event {
        selection_id: event.selection_id.clone(),
        kind: event.kind.as_str().to_string(),
        duplicate,
        node_outcome: if node_result {
            event.detail.clone()
        } else {
            String::new()
        },
        node_latency_ms: if node_result { node_latency_ms } else { 0 },
        ..Default::default()
    };
    if let Some(selection) = selection {
        logged.request_id = selection.request_id.clone();
        logged.impid = selection.impid.clone();
        logged.account_id = selection.account_id.clone();
        logged.network_id = selection.network_id.clone();
        logged.bid_id = selection.bid_id.clone();
        logged.price_micros = selection.price_micros;
        logged.test = selection.test;
    }
    LogEntry {
        event: Some(logged),
        ..Default::default()
    }
}

/// Client-side mediation in the network performance report, like server-side
/// ([`node_result_counts`]). Counted once, as the event is.
fn count_node_result(
    report: &ReportRecorder,
    selection: &Selection,
    outcome: &str,
    latency_ms: u32,
) {
    if selection.network_id.is_empty() || selection.test {
        return;
    }
    report.count(node_result_counts(
        cascade_state::now_unix_seconds(),
        &selection.network_id,
        &selection.bid_id,
        outcome,
        latency_ms,
    ));
}

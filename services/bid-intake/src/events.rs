//! Event reports: impressions, clicks and client-side node results, recorded once per
//! selection and event type, and acknowledged only once stored.

use cascade_core::report::{Metric, counts_at};
use cascade_proto::decision::v1::{
    AttemptOutcome, EventType, ReportEventRequest, ReportEventResponse,
};
use cascade_state::{Event, EventKind, EventRecorded, ReportRecorder, Selection, Store};

use crate::error::DecideError;
use crate::normalize::MAX_ID_LEN;

pub async fn report_event(
    store: &dyn Store,
    report: &ReportRecorder,
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
    match store.record_event(&event).await? {
        EventRecorded::New(selection) => {
            if event.kind == EventKind::NodeResult {
                count_node_result(report, &selection, &event.detail, request.node_latency_ms);
            }
            Ok(ReportEventResponse { duplicate: false })
        }
        EventRecorded::Duplicate => Ok(ReportEventResponse { duplicate: true }),
        EventRecorded::UnknownSelection => Err(DecideError::NotFound {
            field: "selection_id".into(),
            message: format!("no selection {:?} (unknown or expired)", event.selection_id),
        }),
    }
}

/// Client-side mediation in the network performance report, like server-side: a node
/// the client called is a request of its network and a fill, no fill, timeout or error;
/// a filled node is also a win (its impression counts when it is reported). A node the
/// client skipped was not asked. Counted once, as the event is.
fn count_node_result(
    report: &ReportRecorder,
    selection: &Selection,
    outcome: &str,
    latency_ms: u32,
) {
    if selection.network_id.is_empty() || selection.test {
        return;
    }
    let answered = match outcome {
        cascade_state::FILLED => Metric::Fills,
        "no_fill" => Metric::NoFills,
        "timeout" => Metric::Timeouts,
        "error" => Metric::Errors,
        _ => return,
    };
    let now = cascade_state::now_unix_seconds();
    let latency = Metric::latency(u64::from(latency_ms) * 1_000);
    report.count(counts_at(
        now,
        &selection.network_id,
        &selection.bid_id,
        [(Metric::Requests, 1), (answered, 1), (latency, 1)],
    ));
    if answered == Metric::Fills {
        report.count(counts_at(
            now,
            &selection.network_id,
            &selection.bid_id,
            [(Metric::Wins, 1)],
        ));
    }
}

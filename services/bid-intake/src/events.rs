//! Event reports: impressions, clicks and client-side node results, recorded once per
//! selection and event type, and acknowledged only once stored.

use cascade_proto::decision::v1::{
    AttemptOutcome, EventType, ReportEventRequest, ReportEventResponse,
};
use cascade_state::{Event, EventRecorded, Store};

use crate::error::DecideError;
use crate::normalize::MAX_ID_LEN;

pub async fn report_event(
    store: &dyn Store,
    request: ReportEventRequest,
) -> Result<ReportEventResponse, DecideError> {
    if request.selection_id.is_empty() || request.selection_id.len() > MAX_ID_LEN {
        return Err(DecideError::invalid(
            "selection_id",
            format!("required, at most {MAX_ID_LEN} characters"),
        ));
    }
    let (kind, detail) = match request.r#type() {
        EventType::Impression => ("impression", ""),
        EventType::Click => ("click", ""),
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
            ("node_result", outcome)
        }
        EventType::Unspecified => {
            return Err(DecideError::invalid(
                "type",
                "required: EVENT_TYPE_IMPRESSION, EVENT_TYPE_CLICK or EVENT_TYPE_NODE_RESULT",
            ));
        }
    };
    let event = Event {
        selection_id: request.selection_id,
        kind: kind.to_string(),
        detail: detail.to_string(),
    };
    match store.record_event(&event).await? {
        EventRecorded::New => Ok(ReportEventResponse { duplicate: false }),
        EventRecorded::Duplicate => Ok(ReportEventResponse { duplicate: true }),
        EventRecorded::UnknownSelection => Err(DecideError::NotFound {
            field: "selection_id".into(),
            message: format!("no selection {:?} (unknown or expired)", event.selection_id),
        }),
    }
}

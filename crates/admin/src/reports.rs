//! The Reports gRPC service: the network performance report from the store's counters
//! and the revenue networks reported.

use std::sync::Arc;

use cascade_core::report::{Granularity, ReportRow, build_report, days_between, period_of};
use cascade_proto::admin::v1 as pb;
use cascade_proto::admin::v1::reports_server::{Reports, ReportsServer};
use cascade_state::Store;
use tonic::{Request, Response, Status};

use crate::{AdminError, BearerToken};

/// The longest range one report covers.
pub const MAX_REPORT_DAYS: usize = 92;

pub struct ReportService {
    store: Arc<dyn Store>,
}

impl ReportService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The gRPC server, behind the admin bearer token.
    pub fn into_server(
        self,
        token: Option<String>,
    ) -> tonic::service::interceptor::InterceptedService<ReportsServer<ReportService>, BearerToken>
    {
        tonic::service::interceptor::InterceptedService::new(
            ReportsServer::new(self),
            BearerToken::new(token),
        )
    }
}

fn date_or_today(date: &str) -> String {
    if date.is_empty() {
        period_of(cascade_state::now_unix_seconds()).0
    } else {
        date.to_string()
    }
}

#[tonic::async_trait]
impl Reports for ReportService {
    async fn get_network_report(
        &self,
        request: Request<pb::NetworkReportRequest>,
    ) -> Result<Response<pb::NetworkReport>, Status> {
        let request = request.into_inner();
        let days = days_between(
            &date_or_today(&request.from_date),
            &date_or_today(&request.to_date),
            MAX_REPORT_DAYS,
        )
        .map_err(|e| {
            cascade_server::status::invalid_argument(format!("from_date..to_date: {e}"))
        })?;
        let granularity = match pb::ReportGranularity::try_from(request.granularity) {
            Ok(pb::ReportGranularity::Hour) => Granularity::Hour,
            Ok(pb::ReportGranularity::Day | pb::ReportGranularity::Unspecified) => Granularity::Day,
            Err(_) => return Err(Status::invalid_argument("granularity: unknown value")),
        };
        let (counts, reported) = tokio::try_join!(
            self.store.report_counts(&days),
            self.store.reported_revenue(&days)
        )
        .map_err(AdminError::from)?;
        let rows = build_report(&counts, &reported, granularity)
            .into_iter()
            .filter(|row| request.network_id.is_empty() || row.network_id == request.network_id)
            .map(row_to_proto)
            .collect();
        Ok(Response::new(pb::NetworkReport { rows }))
    }

    async fn ingest_network_revenue(
        &self,
        request: Request<pb::IngestNetworkRevenueRequest>,
    ) -> Result<Response<pb::IngestNetworkRevenueResponse>, Status> {
        let request = request.into_inner();
        days_between(&request.date, &request.date, 1)
            .map_err(|e| cascade_server::status::invalid_argument(format!("date: {e}")))?;
        if request.revenue_micros < 0 {
            return Err(Status::invalid_argument(
                "revenue_micros: must not be negative",
            ));
        }
        let configuration = self.store.configuration().await.map_err(AdminError::from)?;
        if !configuration
            .networks
            .iter()
            .any(|n| n.id == request.network_id)
        {
            return Err(Status::invalid_argument(format!(
                "network_id: unknown network {:?}",
                request.network_id
            )));
        }
        self.store
            .put_reported_revenue(&request.date, &request.network_id, request.revenue_micros)
            .await
            .map_err(AdminError::from)?;
        Ok(Response::new(pb::IngestNetworkRevenueResponse {}))
    }
}

/// A report row as the Reports API (and `cascade report`) shows it.
pub fn row_to_proto(row: ReportRow) -> pb::NetworkReportRow {
    pb::NetworkReportRow {
        fill_rate_ppm: row.fill_rate_ppm(),
        estimated_ecpm_micros: row.estimated_ecpm_micros(),
        realized_ecpm_micros: row.realized_ecpm_micros(),
        ecpm_gap_micros: row.ecpm_gap_micros(),
        latency_p50_ms: row.latency_percentile_ms(50),
        latency_p95_ms: row.latency_percentile_ms(95),
        reported_revenue_micros: row.reported_revenue_micros,
        estimated_revenue_micros: row.estimated_revenue_micros,
        period: row.period,
        network_id: row.network_id,
        mediated_bid_id: row.mediated_bid_id,
        requests: row.requests,
        bids: row.bids,
        fills: row.fills,
        no_fills: row.no_fills,
        blocked: row.blocked,
        timeouts: row.timeouts,
        errors: row.errors,
        wins: row.wins,
        impressions: row.impressions,
    }
}

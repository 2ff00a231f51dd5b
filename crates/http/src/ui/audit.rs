//! `/ui/audit`: the newest write requests of the audit log (who, from where, what, how it ended), filtered by
//! token and job like `GET /v1/audit`.

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use kairos_model::audit::AuditFilter;
use maud::html;
use serde::Deserialize;

use super::layout::{Nav, node_page};
use super::{UiResult, format};
use crate::api::AppState;

/// Most records shown (the count says how many match).
const SHOWN_MAX: usize = 200;

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    token: String,
    #[serde(default)]
    job: String,
}

pub async fn page(State(node): State<AppState>, Query(query): Query<AuditQuery>) -> UiResult {
    let non_empty = |text: &str| Some(text.trim().to_owned()).filter(|t| !t.is_empty());
    let filter = AuditFilter { token: non_empty(&query.token), job: non_empty(&query.job), ..AuditFilter::default() };
    let reader = node.state.clone();
    let (records, total) = tokio::task::block_in_place(|| reader.audit(&filter, 0, SHOWN_MAX))?;
    let utc = jiff::tz::TimeZone::UTC;
    let body = html! {
        h1 { "Audit log" }
        form.filters method="get" action="/ui/audit" role="search" aria-label="Filter the audit log" {
            div.field {
                label for="a-token" { "Token" }
                input #a-token name="token" value=(query.token) placeholder="name or accessor id" autocomplete="off";
            }
            div.field {
                label for="a-job" { "Job" }
                input #a-job name="job" value=(query.job) placeholder="job name" autocomplete="off";
            }
            div.field { button type="submit" { "Filter" } }
        }
        p.muted {
            @if total == 0 { "No write request recorded." }
            @else if total > SHOWN_MAX { (total) " requests; the newest " (SHOWN_MAX) " are shown." }
            @else { (total) " request" @if total != 1 { "s" } ", newest first." }
        }
        @if total > 0 {
            div.table-wrap {
                table.audit {
                    thead { tr {
                        th scope="col" { "Time (UTC)" } th scope="col" { "Token" } th scope="col" { "Client" }
                        th scope="col" { "Server" } th scope="col" { "Request" } th scope="col" { "Job" }
                        th scope="col" { "Status" }
                    } }
                    tbody {
                        @for record in &records {
                            tr {
                                td { (format::instant(Some(record.at), &utc)) }
                                td { (record.token) }
                                td { code { (record.client) } }
                                td { (record.node) }
                                td { code { (record.method) " " (record.path) } }
                                td {
                                    @if let Some(job) = &record.job { a href={ "/ui/jobs/" (job) } { (job) } }
                                    @else { "—" }
                                }
                                td { (record.status) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(node_page(&node, "Audit log", Nav::Audit, body).into_response())
}

//! `/ui/busy`: the pending and running executions, oldest first, each with its node, elapsed time, the tail of its
//! output and a cancel button; updated live.

use axum::extract::State;
use axum::response::IntoResponse;
use kairos_model::Timestamp;
use maud::{Markup, html};

use super::layout::{Nav, node_page};
use super::{UiResult, format};
use crate::api::ApiError;
use crate::api::AppState;
use kairos_server::node::Node;

/// Most executions listed (the count says how many there are).
const SHOWN_MAX: usize = 200;
/// Output shown per execution: the last lines, within the last bytes.
const TAIL_BYTES: usize = 600;
const TAIL_LINES: usize = 4;

pub async fn page(State(node): State<AppState>) -> UiResult {
    let live = tokio::task::block_in_place(|| body(&node, Timestamp::now()))?;
    let body = html! {
        h1 { "Busy" }
        div #busy-live data-live="/ui/live/busy" { (live) }
    };
    Ok(node_page(&node, "Busy", Nav::Busy, body).into_response())
}

pub fn body(node: &Node, now: Timestamp) -> Result<Markup, ApiError> {
    let mut active = node.state.active()?;
    active.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.scheduled_at.cmp(&b.scheduled_at)));
    let total = active.len();
    active.truncate(SHOWN_MAX);
    Ok(html! {
        p.muted {
            @if total == 0 { "Nothing is running." }
            @else if total > SHOWN_MAX { (total) " active executions; the oldest " (SHOWN_MAX) " are shown." }
            @else { (total) " active execution" @if total != 1 { "s" } "." }
        }
        @if total > 0 {
            div.table-wrap {
                table.busy {
                    thead { tr {
                        th scope="col" { "Job" } th scope="col" { "Execution" } th scope="col" { "Status" }
                        th scope="col" { "Node" } th scope="col" { "Started" } th scope="col" { "Elapsed" }
                        th scope="col" { "Output (tail)" } th scope="col" { "Actions" }
                    } }
                    tbody {
                        @for exec in &active {
                            @let (text, _) = super::execution::output(node, exec);
                            tr data-execution=(exec.id) {
                                td { a href={ "/ui/jobs/" (exec.job_name) } { (exec.job_name) } }
                                td { a href={ "/ui/jobs/" (exec.job_name) "/executions/" (exec.id) } { code { (exec.id) } } }
                                td { (format::exec_status(exec.status)) }
                                td { (if exec.node_name.is_empty() { "—" } else { exec.node_name.as_str() }) }
                                td { (format::instant(exec.started_at, &jiff::tz::TimeZone::UTC)) }
                                td { (format::elapsed(exec, now).map(format::duration).unwrap_or_else(|| "waiting".into())) }
                                td { pre.tail { (format::last_lines(format::tail(&text, TAIL_BYTES), TAIL_LINES)) } }
                                td.actions {
                                    button.danger type="button" data-action="cancel" data-job=(exec.job_name) data-execution=(exec.id) { "Cancel" }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

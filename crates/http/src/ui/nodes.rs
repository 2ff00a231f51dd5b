//! `/ui/nodes`: the cluster's members (role, address, tags, status; the leader marked) and the Raft view of this
//! node: its state, term and log, and the peers of the current membership.

use axum::extract::State;
use axum::response::IntoResponse;
use maud::html;
use openraft::async_runtime::WatchReceiver;

use super::UiResult;
use super::layout::{Nav, node_page};
use crate::api::AppState;

pub async fn page(State(node): State<AppState>) -> UiResult {
    let metrics = node.raft.metrics().borrow_watched().clone();
    let members = node.members_json().await;
    let leader_id = node.presented_leader();
    let voters: Vec<u64> = metrics.membership_config.voter_ids().collect();
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let body = html! {
        h1 { "Nodes" }
        section aria-labelledby="h-members" {
            h2 #h-members { "Members" }
            div.table-wrap {
                table.members {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Address" }
                        th scope="col" { "Status" } th scope="col" { "Clock vs leader" } th scope="col" { "Tags" }
                    } }
                    tbody {
                        @for member in &members {
                            @let is_leader = member["leader"].as_bool().unwrap_or(false);
                            @let server = member["Tags"]["server"].as_str() == Some("true");
                            tr {
                                td { (text(&member["Name"])) @if is_leader { " " span.badge.leader { "leader" } } }
                                td { (if server { "server" } else { "agent" }) }
                                td { code { (text(&member["Addr"])) ":" (member["Port"]) } }
                                @let status = text(&member["statusText"]);
                                @let badge = match status.as_str() { "alive" => "s-succeeded", "left" => "s-skipped", _ => "s-failed" };
                                td { span class=(format!("badge {badge}")) { (status) } }
                                td.clock {
                                    @match (member["clock_offset_ms"].as_i64(), member["clock_error_ms"].as_i64()) {
                                        (Some(offset), Some(error)) => {
                                            @let ahead = if offset < 0 { "ahead" } else if offset > 0 { "behind" } else { "" };
                                            (format!("{} ms {ahead} ± {error} ms", offset.abs()))
                                        }
                                        _ => span.muted { "not measured yet" },
                                    }
                                }
                                td {
                                    ul.pairs {
                                        @if let Some(tags) = member["Tags"].as_object() {
                                            @for (k, v) in tags { li { code { (k) } " = " code { (text(v)) } } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p.muted { "HTTP API and UI of this node: " code { (node.config.http_addr) } }
        }
        section aria-labelledby="h-raft" {
            h2 #h-raft { "Raft" }
            dl.summary {
                div { dt { "This node" } dd { (metrics.id) } }
                div { dt { "State" } dd { (format!("{:?}", metrics.state)) } }
                div { dt { "Term" } dd { (metrics.current_term) } }
                div { dt { "Leader" } dd { (leader_id.map_or("none".to_string(), |l| l.to_string())) } }
                div { dt { "Last log index" } dd { (metrics.last_log_index.map_or("—".to_string(), |i| i.to_string())) } }
                div { dt { "Last applied" } dd { (metrics.last_applied.map_or("—".to_string(), |l| l.index.to_string())) } }
            }
            h3 { "Peers" }
            div.table-wrap {
                table.peers {
                    thead { tr {
                        th scope="col" { "Id" } th scope="col" { "RPC address" } th scope="col" { "Voter" }
                        th scope="col" { "Role" }
                    } }
                    tbody {
                        @for (id, peer) in metrics.membership_config.nodes() {
                            tr {
                                td { (id) @if *id == metrics.id { " " span.muted { "(this node)" } } }
                                td { code { (peer.addr) } }
                                td { (if voters.contains(id) { "yes" } else { "no (learner)" }) }
                                td { @if Some(*id) == leader_id { span.badge.leader { "leader" } } @else { "follower" } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(node_page(&node, "Nodes", Nav::Nodes, body).into_response())
}

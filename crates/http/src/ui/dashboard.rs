//! `/ui/`: the leader and node count, jobs by status (each a link to the matching job list), and charts of the
//! last hour from [`crate::api::stats`] (the numbers `GET /v1/stats` serves). Refreshed live.

use axum::extract::State;
use axum::response::IntoResponse;
use maud::{Markup, html};

use super::chart::{Chart, Kind};
use super::layout::{Nav, node_page};
use super::{UiResult, format};
use crate::api::AppState;
use crate::api::stats::{self, Stats};

pub async fn page(State(node): State<AppState>) -> UiResult {
    let stats = tokio::task::block_in_place(|| stats::recent(&node))?;
    let body = html! {
        h1 { "Dashboard" }
        div #dashboard-live data-live="/ui/live/dashboard" { (body(&stats)) }
    };
    Ok(node_page(&node, "Dashboard", Nav::Dashboard, body).into_response())
}

fn card(label: &str, value: Markup, href: Option<&str>, class: &str) -> Markup {
    html! {
        @if let Some(href) = href {
            a class={ "card " (class) } href=(href) { span.card-value { (value) } span.card-label { (label) } }
        } @else {
            div class={ "card " (class) } { span.card-value { (value) } span.card-label { (label) } }
        }
    }
}

/// The live part of the dashboard.
pub fn body(stats: &Stats) -> Markup {
    let jobs = &stats.jobs;
    let label = |m: &stats::Minute| m.start.strftime("%H:%M UTC").to_string();
    let charts = [
        Chart {
            id: "chart-runs",
            title: "Runs per minute",
            unit: "runs",
            kind: Kind::Bars,
            class: "runs",
            points: stats.minutes.iter().map(|m| (label(m), Some(m.runs))).collect(),
        },
        Chart {
            id: "chart-failures",
            title: "Failures per minute",
            unit: "failures",
            kind: Kind::Bars,
            class: "failures",
            points: stats.minutes.iter().map(|m| (label(m), Some(m.failures))).collect(),
        },
        Chart {
            id: "chart-lag",
            title: "Fire lag p99 (started − scheduled)",
            unit: "ms",
            kind: Kind::Line,
            class: "lag",
            points: stats.minutes.iter().map(|m| (label(m), m.lag_ms_p99)).collect(),
        },
    ];
    let leader = match &stats.leader {
        Some(name) => html! { (name) },
        None => html! { span.warn { "none" } },
    };
    html! {
        section aria-labelledby="h-cluster" {
            h2 #h-cluster { "Cluster" }
            div.cards {
                (card("Leader", leader, Some("/ui/nodes"), "c-leader"))
                (card("Nodes", html! { (stats.nodes) }, Some("/ui/nodes"), "c-nodes"))
                (card("Executions running", html! { (stats.executions_active) }, Some("/ui/busy"), "c-busy"))
            }
        }
        section aria-labelledby="h-jobs" {
            h2 #h-jobs { "Jobs" }
            div.cards {
                (card("All jobs", html! { (jobs.total) }, Some("/ui/jobs"), "c-total"))
                (card("Succeeded", html! { (jobs.succeeded) }, Some("/ui/jobs?status=success&disabled=false"), "c-succeeded"))
                (card("Failed", html! { (jobs.failed) }, Some("/ui/jobs?status=failed&disabled=false"), "c-failed"))
                (card("Running", html! { (jobs.running) }, Some("/ui/jobs?status=running&disabled=false"), "c-running"))
                (card("Disabled", html! { (jobs.disabled) }, Some("/ui/jobs?disabled=true"), "c-disabled"))
                (card("Never run", html! { (jobs.never_run) }, Some("/ui/jobs?status=untriggered&disabled=false"), "c-never"))
            }
        }
        section aria-labelledby="h-hour" {
            h2 #h-hour { "Last hour" }
            div.charts { @for chart in &charts { (chart.render()) } }
            p.muted { "As of " (format::utc(stats.generated_at)) " · the same numbers as " a href="/v1/stats?pretty" { "GET /v1/stats" } }
        }
    }
}

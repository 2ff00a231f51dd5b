//! Live updates as server-sent events.
//!
//! Most views use one mechanism: the server re-renders a fragment of the page on a timer and sends it only when
//! it changed; the script swaps it into the element that asked for it (`data-live`). An execution's output is
//! different: it is streamed as appended text (`output` events whose id is the byte offset reached, so a
//! reconnecting browser resumes where it was), with `meta` events when the record changes and `done` at the end.
//! Every stream reads the state snapshot, never a lock the scheduler needs, and stops when the browser goes.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use kairos_model::Timestamp;

use super::job::ExecQuery;
use crate::api::AppState;
use kairos_server::node::Node;

const FRAGMENT_EVERY: Duration = Duration::from_secs(1);
const DASHBOARD_EVERY: Duration = Duration::from_secs(5);
const OUTPUT_EVERY: Duration = Duration::from_millis(300);

/// What one render of a fragment produced.
enum Frame {
    Html(String),
    /// The thing shown is gone (a deleted job): tell the page and stop.
    Gone,
    /// A transient failure: keep the last fragment and try again next time.
    Skip,
}

type BoxedEvents = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;
type EventStream = Sse<axum::response::sse::KeepAliveStream<BoxedEvents>>;

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> EventStream {
    Sse::new(Box::pin(stream) as BoxedEvents).keep_alive(KeepAlive::default())
}

/// A stream of a fragment, re-rendered every `every`, sent when it changed.
fn fragments(every: Duration, render: impl FnMut() -> Frame + Send + 'static) -> EventStream {
    let stream = futures::stream::unfold(Some((render, None::<String>, true)), move |state| async move {
        let (mut render, mut last, mut first) = state?;
        loop {
            if !first {
                tokio::time::sleep(every).await;
            }
            first = false;
            match tokio::task::block_in_place(&mut render) {
                Frame::Html(html) if last.as_deref() != Some(html.as_str()) => {
                    let event = Event::default().data(&html);
                    last = Some(html);
                    return Some((Ok(event), Some((render, last, false))));
                }
                Frame::Gone => return Some((Ok(Event::default().event("gone").data("gone")), None)),
                Frame::Html(_) | Frame::Skip => {}
            }
        }
    });
    sse(stream)
}

fn frame(result: Result<maud::Markup, crate::api::ApiError>) -> Frame {
    match result {
        Ok(markup) => Frame::Html(markup.into_string()),
        Err(err) => {
            tracing::debug!("live fragment: {}", err.message);
            Frame::Skip
        }
    }
}

pub async fn dashboard(State(node): State<AppState>) -> EventStream {
    fragments(DASHBOARD_EVERY, move || frame(crate::api::stats::recent(&node).map(|s| super::dashboard::body(&s))))
}

pub async fn busy(State(node): State<AppState>) -> EventStream {
    fragments(FRAGMENT_EVERY, move || frame(super::busy::body(&node, Timestamp::now())))
}

pub async fn job(
    State(node): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> EventStream {
    let query = ExecQuery::from_params(&params);
    fragments(FRAGMENT_EVERY, move || match super::job::live_part(&node, &name, &query, Timestamp::now()) {
        Ok(Some(markup)) => Frame::Html(markup.into_string()),
        Ok(None) => Frame::Gone,
        Err(err) => frame(Err(err)),
    })
}

/// Where an output stream is.
struct Follow {
    node: Arc<Node>,
    job: String,
    id: String,
    /// Bytes of the output already sent.
    offset: usize,
    /// The last `meta` fragment sent.
    meta: Option<String>,
    queue: VecDeque<Event>,
    finished: bool,
}

impl Follow {
    /// Look once: queue new output, a changed record, and `done` when the execution is over.
    fn poll(&mut self) {
        let exec = match self.node.state.execution(&self.job, &self.id) {
            Ok(Some(exec)) => exec,
            Ok(None) => {
                self.queue.push_back(Event::default().event("gone").data("gone"));
                self.finished = true;
                return;
            }
            Err(err) => {
                tracing::debug!("live output: {err}");
                return;
            }
        };
        let (text, _) = super::execution::output(&self.node, &exec);
        if self.offset > text.len() || !text.is_char_boundary(self.offset) {
            self.offset = 0; // the output was replaced (a different node's copy): start over
            self.queue.push_back(Event::default().event("reset").data("reset"));
        }
        let mut end = text.len();
        if exec.status.is_active() && text.ends_with('\u{FFFD}') {
            end -= '\u{FFFD}'.len_utf8(); // maybe half a character still being written: wait for the rest
        }
        if end > self.offset {
            let chunk = serde_json::to_string(&text[self.offset..end]).unwrap_or_default();
            self.queue.push_back(Event::default().event("output").id(end.to_string()).data(chunk));
            self.offset = end;
        }
        if let Ok(Some(record)) = self.node.state.job(&self.job) {
            let meta = super::execution::meta(&record.job, &exec, Timestamp::now()).into_string();
            if self.meta.as_deref() != Some(meta.as_str()) {
                self.queue.push_back(Event::default().event("meta").data(&meta));
                self.meta = Some(meta);
            }
        }
        if !exec.status.is_active() {
            self.queue.push_back(Event::default().event("done").data(exec.status.as_str()));
            self.finished = true;
        }
    }
}

pub async fn execution(
    State(node): State<AppState>,
    Path((job, id)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> EventStream {
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let offset = resume.or_else(|| params.get("from").and_then(|v| v.parse().ok())).unwrap_or(0);
    let follow = Follow { node, job, id, offset, meta: None, queue: VecDeque::new(), finished: false };
    let stream = futures::stream::unfold((follow, true), |(mut follow, first)| async move {
        let mut first = first;
        loop {
            if let Some(event) = follow.queue.pop_front() {
                return Some((Ok(event), (follow, first)));
            }
            if follow.finished {
                return None;
            }
            if !first {
                tokio::time::sleep(OUTPUT_EVERY).await;
            }
            first = false;
            tokio::task::block_in_place(|| follow.poll());
        }
    });
    sse(stream)
}

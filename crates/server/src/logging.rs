//! The node's log lines as `--log-format` says: tracing's text lines, or one JSON object a line for a log pipeline.
//!
//! A JSON line holds `timestamp` (RFC 3339, UTC), `level`, `target`, `message`, the event's own fields, the fields
//! of every span it happens in, and `node` (this node's name), so a pipeline can follow one run across nodes:
//! - `run` spans (the worker, around one run, from its order to its report) carry `job`, `execution` and `term`;
//! - `order` spans (the worker taking an order) carry the same;
//! - `leader` spans (the duties of one term: scheduler, dispatcher, sweep) carry `term`.
//!
//! The node name is the process's, so it is a field of the formatter rather than a span every task would have to
//! enter (tasks spawned without a span would lose it). [`announce`] prints the lines scripts read (`HTTP API
//! listening on …`) whatever the level, in the same format.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Formats events as JSON lines; use it with [`JsonFields`] as the span field formatter (`fmt_fields`), which
/// keeps each span's fields as a JSON object.
pub struct JsonLines {
    pub node: String,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut line = head(meta.level().as_str(), meta.target(), &self.node);
        // Outermost span first, so an inner span's field wins over an outer one's of the same name.
        for span in ctx.event_scope().into_iter().flat_map(|scope| scope.from_root()) {
            let extensions = span.extensions();
            let Some(fields) = extensions.get::<FormattedFields<N>>() else { continue };
            if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields.as_str()) {
                line.extend(fields);
            }
        }
        event.record(&mut FieldsVisitor(&mut line));
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// The fields every line starts with.
fn head(level: &str, target: &str, node: &str) -> Map<String, Value> {
    let mut line = Map::new();
    line.insert("timestamp".into(), Value::String(jiff::Timestamp::now().to_string()));
    line.insert("level".into(), Value::String(level.to_string()));
    line.insert("target".into(), Value::String(target.to_string()));
    line.insert("node".into(), Value::String(node.to_string()));
    line
}

/// An event's fields as JSON values (numbers and booleans stay typed).
struct FieldsVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for FieldsVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

/// The span field formatter that goes with [`JsonLines`].
pub fn json_fields() -> JsonFields {
    JsonFields::new()
}

/// Print a line people and scripts read whatever the log level (the listening addresses): `kairos: {text}` in
/// text, an `INFO` line of target `kairos` in JSON.
pub fn announce(format: LogFormat, node: &str, text: &str) {
    match format {
        LogFormat::Text => eprintln!("kairos: {text}"),
        LogFormat::Json => {
            let mut line = head("INFO", "kairos", node);
            line.insert("message".into(), Value::String(text.to_string()));
            eprintln!("{}", Value::Object(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// A writer into a shared buffer, for reading what the formatter wrote.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_json_line_has_the_node_the_spans_fields_and_its_own() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .fmt_fields(json_fields())
            .event_format(JsonLines { node: "node-1".into() });
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let leader = tracing::info_span!("leader", term = 3);
            let _leader = leader.enter();
            let run = tracing::info_span!("run", job = "backup", execution = "e-1", term = 4);
            let _run = run.enter();
            tracing::warn!(status = "succeeded", exit_code = 0, "run finished: {}", "ok");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim_end()).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(line["node"], "node-1");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "run finished: ok");
        assert_eq!(line["job"], "backup");
        assert_eq!(line["execution"], "e-1");
        assert_eq!(line["term"], 4, "the inner span wins");
        assert_eq!(line["status"], "succeeded");
        assert_eq!(line["exit_code"], 0);
        assert!(line["target"].as_str().unwrap().starts_with("kairos_server"), "{line}");
        assert!(line["timestamp"].as_str().unwrap().parse::<jiff::Timestamp>().is_ok(), "{line}");
        assert_eq!(text.lines().count(), 1);
    }
}

//! Logs and traces of a Stowage process.
//!
//! **Logs** go to stderr, as JSON lines inside a cluster (where a log collector parses them) and
//! as human-readable lines in a terminal. [`LogFormat::Auto`] picks JSON when the process runs in
//! a Kubernetes pod (`KUBERNETES_SERVICE_HOST` is set) and text otherwise.
//!
//! **Traces** are off by default. Given an OTLP endpoint, spans are exported over OTLP/HTTP
//! (protobuf) in batches. Trace context crosses the broker as W3C `traceparent`/`tracestate`,
//! carried in the envelope and copied into AMQP headers ([`crate::envelope`]): the worker starts
//! each job's span as a child of the context the message carries, and the messages a job emits
//! carry the job span's own context. So a snapshot submitted inside a scheduler's span, and the
//! vault-transfer and geo-replication jobs its events trigger, form one trace per recovery
//! point: scheduler → snapshot → vault-transfer → geo-replication.
//!
//! Secrets never reach a log line: the broker URL is an [`crate::AmqpUrl`], whose `Debug` and
//! `Display` leave the credentials out, and keys are kept in types whose `Debug` does not print
//! them.

use std::collections::HashMap;
use std::io::IsTerminal as _;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use stowage_schemas::TraceContext;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON inside a Kubernetes pod, text elsewhere.
    #[default]
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

impl LogFormat {
    /// The concrete format `Auto` stands for in this process.
    pub fn resolve(self) -> LogFormat {
        match self {
            LogFormat::Auto if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                LogFormat::Json
            }
            LogFormat::Auto => LogFormat::Text,
            other => other,
        }
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(LogFormat::Auto),
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            other => Err(format!(
                "unknown log format {other:?}: use auto (JSON in a pod, text elsewhere), json or text"
            )),
        }
    }
}

/// What to set up.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` of the exported spans, e.g. `stowage-vault-transfer`.
    pub service_name: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter directives (`tracing_subscriber::EnvFilter` syntax).
    pub log_filter: String,
    /// Base URL of an OTLP/HTTP collector (e.g. `http://otel-collector:4318`); spans go to
    /// `<base>/v1/traces`. None: tracing export is off.
    pub otlp_endpoint: Option<String>,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error(
        "the log filter {filter:?} is invalid: {reason}; use directives like `info` or `warn,stowage=debug`"
    )]
    Filter {
        /// The filter given.
        filter: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The OTLP exporter could not be built.
    #[error(
        "cannot export traces to {endpoint}: {reason}; check --otlp-endpoint (an http:// or https:// base URL of an OTLP/HTTP collector)"
    )]
    Exporter {
        /// The endpoint given.
        endpoint: String,
        /// The exporter's complaint.
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("logging was already set up in this process")]
    AlreadySet,
}

/// Keeps trace export running; dropping it flushes the spans still buffered.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("warning: could not flush the last trace spans: {err}");
        }
    }
}

/// Install the process-wide logger and, if configured, the trace exporter.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_new(&config.log_filter).map_err(|e| TelemetryError::Filter {
        filter: config.log_filter.clone(),
        reason: e.to_string(),
    })?;
    let logs = match config.log_format.resolve() {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        _ => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter)
    .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
        !is_capped(meta.target(), *meta.level())
    }));

    // Telemetry never takes a process down: an exporter that cannot be built costs the spans
    // (with a warning once logging is up), never the process's work.
    let (provider, exporter_error) = match &config.otlp_endpoint {
        None => (None, None),
        Some(endpoint) => match otlp_provider(endpoint, &config.service_name) {
            Ok(provider) => (Some(provider), None),
            Err(err) => (None, Some(err)),
        },
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("stowage"))
            .with_filter(EnvFilter::new("warn,stowage=info,stowage_runtime=info"))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|_| TelemetryError::AlreadySet)?;
    if let Some(err) = exporter_error {
        tracing::warn!(%err, "trace export is off; the process runs without it");
    }
    Ok(Telemetry { provider })
}

/// Targets of the AMQP libraries whose trace-level events dump whole frames or the broker URI —
/// among them the login frame, whose SASL response holds the broker password (as a list of
/// decimal bytes). Nothing below debug is ever logged from them, whatever the filter says.
const FRAME_LEVEL_TARGETS: &[&str] = &["lapin", "amq_protocol"];

/// The target of kube-rs's request code, whose warnings about a response it cannot parse print
/// the whole response body — which may be a Secret, or a list of them — and whose trace events
/// print response headers and bodies. The caller gets the parse error anyway; only its errors
/// (which name a status or an error, never a body) are logged from it.
const BODY_DUMPING_TARGET: &str = "kube_client::client";

/// Whether an event or span is dropped by the caps on libraries that log secrets: any target
/// under `lapin` or `amq_protocol*` (`amq_protocol_tcp` logs the URI with its password) at trace
/// level, and kube-rs's request code below error level.
fn is_capped(target: &str, level: tracing::Level) -> bool {
    let frames = level == tracing::Level::TRACE
        && FRAME_LEVEL_TARGETS
            .iter()
            .any(|prefix| target.starts_with(prefix));
    frames || (target == BODY_DUMPING_TARGET && level != tracing::Level::ERROR)
}

/// Install ring as rustls's process-wide crypto provider, once. The OTLP exporter's HTTP client
/// (reqwest built with `rustls-no-provider`) panics without one; whoever installed a provider
/// first wins, which is fine.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn otlp_provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig as _;
    install_crypto_provider();
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The OpenTelemetry context a message's trace context names (an empty context when it has
/// none or it does not parse, so the job starts a new trace).
pub fn context_of(trace: Option<&TraceContext>) -> opentelemetry::Context {
    let Some(trace) = trace else {
        return opentelemetry::Context::new();
    };
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_owned(), trace.traceparent.clone());
    if let Some(state) = &trace.tracestate {
        carrier.insert("tracestate".to_owned(), state.clone());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// Make `span` a child of the trace context a message carries. Without a tracing layer (export
/// off) this does nothing.
pub fn set_parent(span: &tracing::Span, trace: Option<&TraceContext>) {
    if trace.is_some() {
        let _ = span.set_parent(context_of(trace));
    }
}

/// The trace context of `span`, to put on the messages it sends; none when traces are off.
pub fn trace_context_of(span: &tracing::Span) -> Option<TraceContext> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    Some(TraceContext {
        traceparent: carrier.remove("traceparent")?,
        tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
    })
}

/// The trace context of the current span (see [`trace_context_of`]).
pub fn current_trace_context() -> Option<TraceContext> {
    trace_context_of(&tracing::Span::current())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_through_an_opentelemetry_context() {
        let trace = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: None,
        };
        let cx = context_of(Some(&trace));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        let garbage = TraceContext {
            traceparent: "not a traceparent".into(),
            tracestate: None,
        };
        assert!(!context_of(Some(&garbage)).span().span_context().is_valid());
    }

    #[test]
    fn the_amqp_libraries_never_log_frames() {
        use tracing::Level;
        for target in [
            "lapin",
            "lapin::io_loop",
            "lapin::frames",
            "lapin::channels",
            "amq_protocol_tcp",
            "amq_protocol::frame",
        ] {
            assert!(is_capped(target, Level::TRACE), "{target}");
            assert!(!is_capped(target, Level::DEBUG), "{target}");
        }
        assert!(!is_capped("stowage_runtime::worker", Level::TRACE));
    }

    #[test]
    fn the_kube_client_never_logs_response_bodies() {
        use tracing::Level;
        for level in [Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE] {
            assert!(is_capped("kube_client::client", level), "{level}");
        }
        assert!(!is_capped("kube_client::client", Level::ERROR));
        assert!(!is_capped("kube_client::client::builder", Level::DEBUG));
    }

    #[test]
    fn auto_is_json_in_a_pod_only() {
        assert_eq!(LogFormat::Json.resolve(), LogFormat::Json);
        assert_eq!(LogFormat::Text.resolve(), LogFormat::Text);
    }
}

//! One recovery point is one trace: a snapshot submitted inside a scheduler's span, and the
//! vault-transfer and geo-replication jobs its events trigger, export spans that share the
//! trace id and chain parent to child across the broker.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use stowage_runtime::{
    InProcessBroker, JobContext, Names, Outcome, Shutdown, StageConfig, StageError, StageHandler,
    Worker, WorkerConfig, client,
};
use stowage_schemas::{Envelope, Message, Stage, samples::samples};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// A stage that emits one sample message of the given kind.
struct Emits {
    stage: Stage,
    emit: Option<Message>,
}

impl StageHandler for Emits {
    type Input = Message;

    fn stage(&self) -> Stage {
        self.stage
    }

    async fn handle(&self, _ctx: JobContext, _message: Message) -> Result<Outcome, StageError> {
        tracing::info!("working");
        Ok(match &self.emit {
            Some(message) => Outcome::done().emit(message.clone()),
            None => Outcome::done(),
        })
    }
}

fn sample(kind: &str) -> Message {
    samples()
        .into_iter()
        .find(|e| e.kind() == kind)
        .unwrap_or_else(|| panic!("no sample of {kind}"))
        .message
}

fn job_span(spans: &[SpanData], stage: Stage) -> &SpanData {
    let prefix = format!("{stage} ");
    spans
        .iter()
        .find(|s| s.name.starts_with(&prefix))
        .unwrap_or_else(|| {
            let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
            panic!("no span for stage {stage}; spans: {names:?}")
        })
}

#[test]
fn spans_of_one_recovery_point_form_one_trace_across_stages() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // A current-thread runtime keeps every task on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    runtime.block_on(async {
        let broker = Arc::new(InProcessBroker::new());
        let config = WorkerConfig {
            names: Names::new("traces"),
            // The sample snapshot job's cluster: this worker serves its snapshot queue.
            cluster: Some("aks-prod".into()),
            ..WorkerConfig::default()
        };
        let worker = Worker::new(broker.clone(), config.clone())
            .stage(
                Emits {
                    stage: Stage::Snapshot,
                    emit: Some(sample("event.rp.created")),
                },
                StageConfig::default(),
            )
            .stage(
                Emits {
                    stage: Stage::VaultTransfer,
                    emit: Some(sample("event.rp.vaulted")),
                },
                StageConfig::default(),
            )
            .stage(
                Emits {
                    stage: Stage::GeoReplication,
                    emit: None,
                },
                StageConfig::default(),
            );
        let (trigger, shutdown) = Shutdown::new();
        let running = tokio::spawn(worker.run(shutdown));

        let job = Envelope::new("job-trace-1", sample("job.snapshot")).on_cluster("aks-prod");
        assert!(job.trace.is_none());
        let tick = tracing::info_span!("scheduler tick");
        async {
            // The topology is declared by the worker; wait for it before submitting.
            let mut tries = 0;
            while let Err(err) = client::submit(broker.as_ref(), &config.names, &job).await {
                tries += 1;
                assert!(tries < 100, "cannot submit: {err}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        .instrument(tick)
        .await;

        for _ in 0..250 {
            let names: Vec<_> = exporter
                .get_finished_spans()
                .unwrap()
                .iter()
                .map(|s| s.name.to_string())
                .collect();
            if names.iter().any(|n| n.starts_with("geo-replication ")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        trigger.trigger();
        running.await.unwrap().unwrap();
    });

    let spans = exporter.get_finished_spans().unwrap();
    let tick = spans
        .iter()
        .find(|s| s.name == "scheduler tick")
        .expect("the scheduler's span");
    let snapshot = job_span(&spans, Stage::Snapshot);
    let vault = job_span(&spans, Stage::VaultTransfer);
    let geo = job_span(&spans, Stage::GeoReplication);

    let trace: TraceId = tick.span_context.trace_id();
    for span in [snapshot, vault, geo] {
        assert_eq!(
            span.span_context.trace_id(),
            trace,
            "{} is in another trace",
            span.name
        );
    }
    assert_eq!(snapshot.parent_span_id, tick.span_context.span_id());
    assert_eq!(vault.parent_span_id, snapshot.span_context.span_id());
    assert_eq!(geo.parent_span_id, vault.span_context.span_id());
    assert_ne!(geo.parent_span_id, SpanId::INVALID);
    assert_eq!(snapshot.name, "snapshot job.snapshot");
    assert_eq!(vault.name, "vault-transfer event.rp.created");
}

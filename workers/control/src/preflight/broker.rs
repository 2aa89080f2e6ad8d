//! The broker group: [`BROKER`] and [`TOPOLOGY`].

use super::*;

/// [`BROKER`] and [`TOPOLOGY`].
pub(super) async fn broker_checks(targets: &PreflightTargets) -> Vec<Check> {
    let Some(target) = &targets.broker else {
        let why = "no broker to check (--no-broker)";
        return vec![Check::skipped(BROKER, why), Check::skipped(TOPOLOGY, why)];
    };
    let endpoint = target.broker.endpoint();
    let reach_fix = format!(
        "start RabbitMQ, or fix --amqp-url (now {endpoint}); check the user's password and vhost"
    );
    let probe_queue = target.names.dead_letter_queue(Stage::Snapshot);
    let reach = timed(
        BROKER,
        targets.timeout,
        &format!("the broker at {endpoint}"),
        &reach_fix,
        async {
            match target.broker.queue_depth(&probe_queue).await {
                Ok(_) | Err(BrokerError::NotFound { .. }) => {
                    Check::pass(BROKER, format!("{endpoint} answers"))
                }
                Err(e) => Check::fail(BROKER, chain(&e), reach_fix.clone()),
            }
        },
    )
    .await;
    if reach.failed() {
        return vec![reach, Check::skipped(TOPOLOGY, "the broker is unreachable")];
    }
    let declare_fix = format!(
        "declare it: `stowage topology declare --amqp-url <url> --prefix {}` (every worker also declares it at start)",
        target.names.prefix()
    );
    let topology = timed(
        TOPOLOGY,
        targets.timeout,
        &format!("the broker at {endpoint}"),
        &declare_fix,
        async {
            // The vault stages' queues and every dead-letter queue; the cluster-side stages'
            // queues are per cluster, declared by their workers and producers (below).
            let queues: Vec<String> = Stage::ALL
                .iter()
                .flat_map(|&s| {
                    let work = (!s.is_cluster_side()).then(|| target.names.stage_queue(s));
                    work.into_iter().chain([target.names.dead_letter_queue(s)])
                })
                .collect();
            let answers = futures::stream::iter(queues.iter())
                .map(|q| async move { (q, target.broker.queue_depth(q).await) })
                .buffered(4)
                .collect::<Vec<_>>()
                .await;
            let mut missing = Vec::new();
            for (queue, answer) in answers {
                match answer {
                    Ok(_) => {}
                    Err(BrokerError::NotFound { .. }) => missing.push(queue.as_str()),
                    Err(e) => {
                        return Check::fail(
                            TOPOLOGY,
                            format!("cannot inspect queue {queue}: {}", chain(&e)),
                            reach_fix.clone(),
                        );
                    }
                }
            }
            if missing.is_empty() {
                let all = format!(
                    "prefix {:?}: all {} stage and dead-letter queues exist",
                    target.names.prefix(),
                    queues.len()
                );
                match &targets.cluster_name {
                    None => Check::pass(TOPOLOGY, all),
                    Some(cluster) => cluster_queues_check(target, cluster, all, &reach_fix).await,
                }
            } else {
                Check::fail(
                    TOPOLOGY,
                    format!(
                        "prefix {:?}: {} of {} queues are missing: {}",
                        target.names.prefix(),
                        missing.len(),
                        queues.len(),
                        first_few(missing.into_iter(), 4)
                    ),
                    declare_fix.clone(),
                )
            }
        },
    )
    .await;
    vec![reach, topology]
}

/// The topology check's verdict on one cluster's queues: a pass when a worker consumes each,
/// a warning naming the queue, its waiting jobs and the worker to start when none does (its
/// jobs wait there, never taken by another cluster's workers).
async fn cluster_queues_check(
    target: &BrokerTarget,
    cluster: &str,
    all: String,
    reach_fix: &str,
) -> Check {
    let queues = match stowage_runtime::client::cluster_queues(
        target.broker.as_ref(),
        &target.names,
        cluster,
    )
    .await
    {
        Ok(queues) => queues,
        Err(e) => {
            return Check::fail(
                TOPOLOGY,
                format!("cannot inspect cluster {cluster:?}'s queues: {}", chain(&e)),
                reach_fix.to_owned(),
            );
        }
    };
    let unserved: Vec<_> = queues.iter().filter(|q| q.consumers == 0).collect();
    if unserved.is_empty() {
        let served = queues
            .iter()
            .map(|q| format!("{} ({} worker(s))", q.queue, q.consumers))
            .collect::<Vec<_>>()
            .join(", ");
        return Check::pass(
            TOPOLOGY,
            format!("{all}; cluster {cluster:?} is served: {served}"),
        );
    }
    let detail = unserved
        .iter()
        .map(|q| format!("{} has {} waiting job(s) and no worker", q.queue, q.waiting))
        .collect::<Vec<_>>()
        .join("; ");
    let stages = unserved
        .iter()
        .map(|q| q.stage.as_str())
        .collect::<Vec<_>>()
        .join(",");
    Check::warn(
        TOPOLOGY,
        format!(
            "{all}; no worker serves cluster {cluster:?}: {detail}; its jobs wait there (no other \
             cluster's workers take them)"
        ),
        format!(
            "run the {stages} worker(s) inside cluster {cluster:?}: `stowage worker --stage <stage> \
             --cluster-name {cluster}` (infra/k8s deploys them with STOWAGE_CLUSTER_NAME)"
        ),
    )
}

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
    let probe_queue = target.names.stage_queue(Stage::Snapshot);
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
            let queues: Vec<String> = Stage::ALL
                .iter()
                .flat_map(|&s| {
                    [
                        target.names.stage_queue(s),
                        target.names.dead_letter_queue(s),
                    ]
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
                Check::pass(
                    TOPOLOGY,
                    format!(
                        "prefix {:?}: all {} stage and dead-letter queues exist",
                        target.names.prefix(),
                        queues.len()
                    ),
                )
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

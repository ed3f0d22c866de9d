//! The polling loop of one ScaledObject: read the lag, decide, start or stop processes.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use platform::{
    kafka::KafkaSettings,
    lag::{self, OffsetResetPolicy},
    sync::lock,
};
use rdkafka::consumer::BaseConsumer;
use tokio::{sync::watch, time::Instant};

use crate::{
    keda::{read_trigger, PartitionOffsets, Scaler, TriggerReading},
    replicas::Replicas,
    scaled_object::ScaledObject,
    status::{write_targets, Shared, TargetStatus, TriggerStatus},
};

/// Scales `replicas` for `so` until `shutdown`, then stops them all.
pub async fn drive(
    so: ScaledObject,
    mut replicas: Replicas,
    kafka: KafkaSettings,
    status: Shared,
    targets_file: Option<PathBuf>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut clients: HashMap<String, Arc<BaseConsumer>> = HashMap::new();
    for trigger in &so.triggers {
        if !clients.contains_key(&trigger.group) {
            clients.insert(trigger.group.clone(), Arc::new(kafka.base_consumer(&trigger.group)?));
        }
    }
    let mut scaler = Scaler::new(&so);
    let mut tick = tokio::time::interval(so.polling_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        scaled_object = %so.name,
        polling_secs = so.polling_interval.as_secs_f64(),
        cooldown_secs = so.cooldown.as_secs_f64(),
        max_replicas = so.max_replicas,
        "watching"
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|down| *down) => break,
        }
        let readings = match read_all(&so, &clients).await {
            Ok(r) => r,
            Err(err) => {
                // KEDA keeps the current scale when its scaler fails.
                tracing::warn!(scaled_object = %so.name, error = format!("{err:#}"), "cannot read lag; keeping the scale");
                continue;
            }
        };
        let before = scaler.replicas();
        let decision = scaler.decide(Instant::now().into_std(), &readings);
        if decision.replicas != before {
            tracing::info!(
                scaled_object = %so.name,
                from = before,
                to = decision.replicas,
                lag = decision.lag,
                desired = decision.desired,
                "scaling"
            );
        }
        if let Err(err) = replicas.scale_to(decision.replicas as usize) {
            tracing::error!(scaled_object = %so.name, error = format!("{err:#}"), "cannot start a replica");
        }
        let triggers = so
            .triggers
            .iter()
            .zip(&readings)
            .map(|(t, r)| TriggerStatus { topic: t.topic.clone(), metric: r.metric, active: r.active })
            .collect();
        let entry = TargetStatus {
            name: so.name.clone(),
            target: so.target.clone(),
            replicas: decision.replicas,
            desired: decision.desired,
            max_replicas: so.max_replicas,
            lag: decision.lag,
            active: decision.active,
            triggers,
            restarts: replicas.exited_by_themselves(),
            metrics_targets: replicas.metrics_targets(),
        };
        let snapshot = {
            let mut shared = lock(&status);
            if let Some(slot) = shared.scaled_objects.iter_mut().find(|s| s.name == so.name) {
                *slot = entry;
            }
            shared.clone()
        };
        if let Some(path) = &targets_file {
            if let Err(err) = write_targets(path, &snapshot) {
                tracing::warn!(error = format!("{err:#}"), "cannot write the Prometheus targets file");
            }
        }
    }
    tracing::info!(scaled_object = %so.name, "stopping its replicas (SIGTERM, drain)");
    replicas.stop_all().await;
    Ok(())
}

async fn read_all(
    so: &ScaledObject,
    clients: &HashMap<String, Arc<BaseConsumer>>,
) -> anyhow::Result<Vec<TriggerReading>> {
    let mut readings = Vec::with_capacity(so.triggers.len());
    for trigger in &so.triggers {
        let client = clients.get(&trigger.group).cloned().ok_or_else(|| anyhow::anyhow!("no client"))?;
        let topic = trigger.topic.clone();
        let partitions = tokio::task::spawn_blocking(move || {
            lag::group_lag(&*client, &[topic.as_str()], OffsetResetPolicy::Earliest, Duration::from_secs(5))
        })
        .await??;
        let offsets: Vec<PartitionOffsets> = partitions
            .iter()
            .map(|p| PartitionOffsets { committed: p.committed, log_end: p.log_end })
            .collect();
        readings.push(read_trigger(trigger, &offsets));
    }
    Ok(readings)
}

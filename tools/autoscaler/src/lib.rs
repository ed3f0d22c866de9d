//! A local stand-in for KEDA: reads the ScaledObjects in `keda/`, measures Kafka lag the
//! way KEDA's Kafka scaler does, and starts and stops real handler processes the way
//! the HPA would scale their Deployments. A development aid: in a cluster, KEDA does
//! this job.

pub mod keda;
pub mod replicas;
pub mod scale;
pub mod scaled_object;
pub mod status;

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use platform::kafka::KafkaSettings;
use tokio::sync::watch;

use crate::{replicas::Replicas, scaled_object::ScaledObject, status::TargetStatus};

/// What to run and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Folder of ScaledObject YAML files (`keda/`).
    pub keda_dir: PathBuf,
    /// Program per scale target name (`responder` → path of the responder binary).
    pub programs: HashMap<String, PathBuf>,
    /// Address of `/status`.
    pub listen: SocketAddr,
    /// Where replica logs go.
    pub log_dir: Option<PathBuf>,
    /// Where the replicas' `/metrics` addresses are listed for Prometheus.
    pub targets_file: Option<PathBuf>,
    /// SIGTERM → SIGKILL grace for replicas.
    pub grace: Duration,
    /// Overrides of the files' timings (to watch a full cycle in minutes, not hours).
    pub polling: Option<Duration>,
    /// Overrides `cooldownPeriod`.
    pub cooldown: Option<Duration>,
    /// Overrides the scale-down stabilization window.
    pub scale_down_window: Option<Duration>,
}

/// Scales until `shutdown` turns true, then stops every replica.
pub async fn run(
    options: Options,
    kafka: KafkaSettings,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut objects = ScaledObject::load_dir(&options.keda_dir)?;
    let status: status::Shared = Arc::default();
    let mut tasks = Vec::new();
    for so in &mut objects {
        if let Some(p) = options.polling {
            so.polling_interval = p;
        }
        if let Some(c) = options.cooldown {
            so.cooldown = c;
        }
        if let Some(w) = options.scale_down_window {
            so.scale_down_window = w;
        }
    }
    for so in objects {
        let program = options.programs.get(&so.target).cloned().with_context(|| {
            format!("ScaledObject {} scales {:?}: pass --handler {}=PATH", so.name, so.target, so.target)
        })?;
        let replicas =
            Replicas::new(&so.target, program, vec!["run".into()], options.log_dir.clone(), options.grace);
        platform::sync::lock(&status).scaled_objects.push(TargetStatus {
            name: so.name.clone(),
            target: so.target.clone(),
            max_replicas: so.max_replicas,
            ..Default::default()
        });
        let targets_file = options.targets_file.clone();
        tasks.push(tokio::spawn(scale::drive(
            so,
            replicas,
            kafka.clone(),
            status.clone(),
            targets_file,
            shutdown.clone(),
        )));
    }
    let server = tokio::spawn(status::serve(options.listen, status, shutdown.clone()));
    tracing::info!(address = %options.listen, "autoscaler status on /status");
    let mut result = Ok(());
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => result = Err(err),
            Err(err) => result = Err(anyhow::anyhow!("scaling task failed: {err}")),
        }
    }
    if server.is_finished() {
        server.await.context("status server task")??;
    } else {
        server.abort();
    }
    result
}
